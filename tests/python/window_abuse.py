"""A client that breaks SSH's flow control on purpose, for tests/hostile_ssh.rs.

paramiko (a real SSH implementation, not consolegate's) authenticates with
a console connection's key and opens the instance's VNC tunnel; then it
sends CHANNEL_WINDOW_ADJUST messages that overflow the 32-bit window, and
channel data far past the window the gateway granted, as raw messages
under paramiko's transport. Prints one JSON line: how many bytes it sent,
and whether the gateway closed the connection.

usage: window_abuse.py PORT SOURCE USER KEYFILE MIB
"""

import json
import socket
import sys
import time

import paramiko
from paramiko.common import cMSG_CHANNEL_DATA, cMSG_CHANNEL_WINDOW_ADJUST
from paramiko.message import Message


def main():
    port, source, user, keyfile, mib = sys.argv[1:6]
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", int(port)))
    transport = paramiko.Transport(sock)
    transport.start_client(timeout=10)
    transport.auth_publickey(user, paramiko.Ed25519Key.from_private_key_file(keyfile))
    chan = transport.open_channel("direct-tcpip", ("vm1", 5900), ("127.0.0.1", 0))
    granted = chan.out_window_size
    for _ in range(4):
        m = Message()
        m.add_byte(cMSG_CHANNEL_WINDOW_ADJUST)
        m.add_int(chan.remote_chanid)
        m.add_int(0xFFFFFFFF)
        transport._send_user_message(m)
    piece = b"w" * 32768
    sent = 0
    closed = False
    try:
        for _ in range(int(mib) * 32):
            if not transport.is_active():
                closed = True
                break
            m = Message()
            m.add_byte(cMSG_CHANNEL_DATA)
            m.add_int(chan.remote_chanid)
            m.add_string(piece)
            transport._send_user_message(m)
            sent += len(piece)
    except (EOFError, OSError, paramiko.SSHException):
        closed = True
    # Give the gateway a moment to close a connection it refuses.
    deadline = time.time() + 5
    while not closed and time.time() < deadline:
        closed = not transport.is_active()
        time.sleep(0.1)
    print(json.dumps({"granted": granted, "sent": sent, "closed": closed}), flush=True)
    transport.close()


if __name__ == "__main__":
    main()
