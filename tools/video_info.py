"""Print a video file's frame count, frame rate and size; with ``--expect-frames N`` exit 1
unless it has exactly N frames (CI checks the quick start's video with it).

    python -m tools.video_info VIDEO [--expect-frames N]
"""
from __future__ import annotations

import argparse
import json
import sys


def video_info(path: str) -> dict:
    """``{"frames", "fps", "width", "height", "seconds"}`` of the first video stream,
    counting decoded frames (container headers can be approximate)."""
    import av  # installed with ComfyUI's requirements (its video nodes write through it)

    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        return {"frames": frames, "fps": fps, "width": stream.width, "height": stream.height,
                "seconds": frames / fps if fps else None}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video")
    parser.add_argument("--expect-frames", type=int)
    args = parser.parse_args(argv)
    info = video_info(args.video)
    print(json.dumps(info))
    if args.expect_frames is not None and info["frames"] != args.expect_frames:
        print(f"{args.video} has {info['frames']} frames, expected {args.expect_frames}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
