"""Drives consolegate's Nova-compatible API with the stock python-novaclient
and openstacksdk, unmodified, and prints what they got as JSON.

Environment: EP (http://host:port/v2.1), TOKEN (member), ADMIN_TOKEN, SERVER.
"""
import json
import os

from keystoneauth1 import session, token_endpoint
from novaclient import client as nova_client
import openstack

ep, token, admin, server = (os.environ[k] for k in ("EP", "TOKEN", "ADMIN_TOKEN", "SERVER"))
out = {}

sess = session.Session(auth=token_endpoint.Token(ep, token))
# Microversion 2.6+: POST /servers/{id}/remote-consoles.
nova = nova_client.Client("2.6", session=sess, endpoint_override=ep)
out["novaclient_2_6_serial"] = dict(nova.servers.get_console_url(server, "serial"))
out["novaclient_2_6_novnc"] = dict(nova.servers.get_console_url(server, "novnc"))
# Microversion 2.1: the legacy server actions.
legacy = nova_client.Client("2.1", session=sess, endpoint_override=ep)
out["novaclient_2_1_serial"] = dict(legacy.servers.get_serial_console(server, "serial"))
out["novaclient_2_1_novnc"] = dict(legacy.servers.get_vnc_console(server, "novnc"))

conn = openstack.connection.Connection(auth_type="admin_token", auth={"token": token, "endpoint": ep})
rc = conn.compute.create_server_remote_console(server, protocol="serial", type="serial")
out["openstacksdk_remote_console"] = {"protocol": rc.protocol, "type": rc.type, "url": rc.url}
out["openstacksdk_legacy_novnc"] = dict(conn.compute.get_server_console_url(server, "novnc"))

# The admin looks a token up (os-console-auth-tokens is admin only).
url = out["novaclient_2_6_serial"]["remote_console"]["url"]
console_token = url.split("token=")[1]
admin_sess = session.Session(auth=token_endpoint.Token(ep, admin))
resp = admin_sess.get(ep + "/os-console-auth-tokens/" + console_token,
                      headers={"OpenStack-API-Version": "compute 2.31"}, raise_exc=False)
out["token_lookup"] = {"status": resp.status_code, "body": resp.json()}
member = sess.get(ep + "/os-console-auth-tokens/" + console_token,
                  headers={"OpenStack-API-Version": "compute 2.31"}, raise_exc=False)
out["token_lookup_as_member"] = member.status_code
print(json.dumps(out))
