"""Reference for the ffmpeg comparison: the transcode `vidseg file --model none` does, in one
process and one Python loop with no ring, no queues and no second process.

Same settings as vidseg's sink (libx264 veryfast, crf 23, yuv420p, 1.5 frame threads per CPU,
one decoder thread, source time base, first audio stream copied). It shows what PyAV itself
costs against the ffmpeg CLI, so that what is left of the gap is the pipeline's own.

    python docs/benchmarks/pyav_transcode.py IN.mp4 OUT.mp4
"""
import os
import sys

import av


def main(src: str, dst: str) -> None:
    inp = av.open(src)
    video = inp.streams.video[0]
    video.thread_type = "AUTO"
    video.codec_context.thread_count = 1
    out = av.open(dst, "w", format="mp4")
    enc = out.add_stream("libx264", rate=video.average_rate, options={"preset": "veryfast", "crf": "23"})
    enc.width, enc.height, enc.pix_fmt = video.codec_context.width, video.codec_context.height, "yuv420p"
    enc.codec_context.thread_count = (3 * len(os.sched_getaffinity(0))) // 2
    enc.codec_context.thread_type = "AUTO"
    enc.time_base = video.time_base
    audio = out.add_stream_from_template(inp.streams.audio[0]) if inp.streams.audio else None
    streams = [video] + ([inp.streams.audio[0]] if audio else [])
    for packet in inp.demux(streams):
        if packet.stream.type == "audio":
            if packet.dts is not None:
                packet.stream = audio
                out.mux(packet)
            continue
        for frame in packet.decode():
            frame.pict_type = av.video.frame.PictureType.NONE
            out.mux(enc.encode(frame))
    out.mux(enc.encode(None))
    out.close()
    inp.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
