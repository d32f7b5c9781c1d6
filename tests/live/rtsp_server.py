"""A real RTSP server for the live tests (gst-rtsp-server through python3-gi).

Run with the SYSTEM python, which has python3-gi and gir1.2-gst-rtsp-server-1.0:

    /usr/bin/python3 tests/live/rtsp_server.py [--port 0] [--file clip.mp4] [--auth user:pass]

Listens on 127.0.0.1 only and serves
  /live  a live test pattern (videotestsrc is-live=true → x264 zerolatency), never ends;
  /sound the same with an AAC tone beside it;
  /file  the H.264 video of --file (an MP4), at its own rate, ends with the file.
Prints "READY <port>" on stdout once it accepts connections (so --port 0 picks a free port),
then "CLIENT" for each client that connects; with --auth every mount needs that user:pass (HTTP basic). Ends on SIGTERM/SIGINT.
"""
import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def live_pipeline(width: int, height: int, fps: int) -> str:
    """Colour bars with a running clock (when gstreamer1.0-x's timeoverlay is there), one
    keyframe a second, no B-frames."""
    clock = "timeoverlay ! " if Gst.ElementFactory.find("timeoverlay") else ""
    return (
        f"( videotestsrc is-live=true pattern=smpte ! video/x-raw,width={width},height={height},"
        f"framerate={fps}/1 ! {clock}x264enc tune=zerolatency speed-preset=ultrafast "
        f"key-int-max={fps} bframes=0 ! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )")


def sound_pipeline(width: int, height: int, fps: int) -> str:
    """The live pattern with a 440 Hz tone in AAC beside it, as IP cameras with a microphone send."""
    return (live_pipeline(width, height, fps)[:-2] + " audiotestsrc is-live=true wave=sine ! audioconvert ! "
            "avenc_aac ! aacparse ! rtpmp4apay name=pay1 pt=97 )")


def file_pipeline(path: str) -> str:
    """Streams the first video track of an MP4 holding H.264, in real time."""
    return (f"( filesrc location=\"{path}\" ! qtdemux ! h264parse ! "
            f"rtph264pay name=pay0 pt=96 config-interval=1 )")


def add_auth(server, factories, user: str, password: str) -> None:
    """Every mount requires HTTP basic user:password."""
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", user)
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)
    role = Gst.Structure.new_from_string(
        f"{user}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")
    for factory in factories:
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role_from_structure(role)
        factory.set_permissions(permissions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--file", help="MP4 with an H.264 video track, served at /file")
    parser.add_argument("--auth", help="user:pass required on every mount")
    parser.add_argument("--size", default="320x240", help="live pattern WxH")
    parser.add_argument("--fps", type=int, default=30, help="live pattern frame rate")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    width, height = (int(v) for v in args.size.split("x"))
    live = GstRtspServer.RTSPMediaFactory()
    live.set_launch(live_pipeline(width, height, args.fps))
    live.set_shared(True)
    mounts.add_factory("/live", live)
    sound = GstRtspServer.RTSPMediaFactory()
    sound.set_launch(sound_pipeline(width, height, args.fps))
    sound.set_shared(True)
    mounts.add_factory("/sound", sound)
    factories = [live, sound]
    if args.file:
        clip = GstRtspServer.RTSPMediaFactory()
        clip.set_launch(file_pipeline(args.file))
        mounts.add_factory("/file", clip)
        factories.append(clip)
    if args.auth:
        user, password = args.auth.split(":", 1)
        add_auth(server, factories, user, password)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    server.connect("client-connected", lambda *_: print("CLIENT", flush=True))
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
