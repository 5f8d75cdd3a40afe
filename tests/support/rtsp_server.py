"""A real RTSP server for the tests: GStreamer's gst-rtsp-server (Debian's
gir1.2-gst-rtsp-server-1.0, driven from the system python3 with python3-gi), serving a video
file's H.264 as a live camera would, in real time, at rtsp://127.0.0.1:PORT/cam.

    python3 tests/support/rtsp_server.py PORT FILE [USER:PASSWORD]

Each client gets the file from its start; the server prints `ready` once it listens. With
USER:PASSWORD, a client must authenticate (HTTP Digest, as IP cameras ask) or gets 401."""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
port, path = sys.argv[1], sys.argv[2]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(f'( filesrc location="{path}" ! qtdemux ! h264parse config-interval=-1 '
                   f'! rtph264pay name=pay0 pt=96 )')
if len(sys.argv) > 3:
    from gi.repository import GstRtsp  # noqa: E402

    user, password = sys.argv[3].split(":", 1)
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
    auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
    auth.add_digest(user, password, token)
    server.set_auth(auth)
    factory.add_role_from_structure(Gst.Structure.from_string(
        "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")[0])
server.get_mount_points().add_factory("/cam", factory)
if server.attach(None) == 0:
    sys.exit(f"cannot listen on 127.0.0.1:{port}")
print("ready", flush=True)
GLib.MainLoop().run()
