"""Opens a serial console URL with a plain WebSocket client (PyPI
websocket-client), types a line, and prints everything received until the
expected text appears (or a timeout), as JSON.

Arguments: URL TYPED EXPECTED
"""
import json
import sys
import time

import websocket

url, typed, expected = sys.argv[1], sys.argv[2], sys.argv[3]
result = {"opened": False, "received": "", "found": False}
try:
    ws = websocket.create_connection(url, timeout=20)
except websocket.WebSocketBadStatusException as e:
    result["status"] = e.status_code
    print(json.dumps(result))
    sys.exit(0)
result["opened"] = True
ws.send_binary(typed.encode())
deadline = time.time() + 20
received = b""
while time.time() < deadline and expected.encode() not in received:
    try:
        frame = ws.recv()
    except websocket.WebSocketTimeoutException:
        break
    received += frame if isinstance(frame, bytes) else frame.encode()
ws.close()
result["received"] = received.decode("utf-8", "replace")
result["found"] = expected.encode() in received
print(json.dumps(result))
