"""Decode: the video MoVQ turns a video latent into frames, chunk by chunk."""
from __future__ import annotations

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..kv_core.movq import decode_video, video_chunk_sizes
from ..kv_core.pipeline import frame_rate
from . import common
from .common import CATEGORY
from .first_frame import image_output
from .keyframes import MAX_KEYFRAMES

MAX_CHUNK = 256


class KandinskyVideoDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KandinskyVideoDecode",
            display_name="Kandinsky Video Decode",
            category=f"{CATEGORY}/decode",
            description=("Decodes a video latent with the temporal video MoVQ, a few frames at a time, into an "
                         "IMAGE batch and the frame rate that keeps the model's timing (a 12-keyframe video "
                         "lasts 5.5 s). Wire both into CreateVideo -> SaveVideo, or SaveAnimatedWEBP. If "
                         "decoding runs out of memory, save the latent (Save Latent) and retry with a smaller "
                         "chunk_size."),
            inputs=[
                common.VideoMoVQ.Input("video_movq", tooltip="From Load Kandinsky Video Video MoVQ."),
                io.Latent.Input("latent", tooltip="Video latent from Kandinsky Video Keyframes / Interpolate "
                                                  "(or Load Latent of one)."),
                io.Int.Input("chunk_size", default=0, min=0, max=MAX_CHUNK,
                             tooltip="Frames decoded together (they share the decoder's temporal layers). 0: as "
                                     "the release (N // 4 chunks, about 4-5 frames each). Smaller uses less "
                                     "memory but changes the result slightly."),
                io.Int.Input("num_keyframes", default=0, min=0, max=MAX_KEYFRAMES, optional=True,
                             tooltip="Keyframes the video was made from, for the frame rate. 0: as the latent "
                                     "records it (straight from Keyframes / Interpolate). A latent from Load "
                                     "Latent carries only its frames: set this to the Keyframes node's "
                                     "num_keyframes (12 in the release), or the node says so."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The frames, [frames, H, W, 3] in 0..1."),
                io.Float.Output(display_name="fps", tooltip="Frame rate to play the frames at (12, 45, 177 frames "
                                                            "of a 12-keyframe video: 2.18, 8.18, 32.2 fps)."),
            ],
        )

    @classmethod
    def execute(cls, video_movq, latent, chunk_size=0, num_keyframes=0) -> io.NodeOutput:
        videos = common.latent_videos(latent, "Kandinsky Video Decode")
        num_frames = int(videos[0].shape[0])
        keyframes = common.video_keyframes(latent, num_frames, int(num_keyframes), "Kandinsky Video Decode")
        chunk = int(chunk_size) or None
        sizes = video_chunk_sizes(num_frames, chunk)
        bar = common.StepProgress(len(sizes) * len(videos))
        h, w = videos[0].shape[-2:]
        frames = []
        with torch.inference_mode():
            memory = common.activation_memory(max(sizes), h, w, video_movq.compute_dtype, 300)
            with common.stage(video_movq, memory_required=memory) as device:
                for i, video in enumerate(videos):
                    bar.cancel()
                    done = i * len(sizes)
                    decoded = decode_video(video_movq.module, video.to(device=device, dtype=video_movq.compute_dtype),
                                           chunk, progress=lambda k, n: bar(done + k, bar.bar.total))
                    frames.append(image_output(decoded))
                    del decoded
        images = frames[0] if len(frames) == 1 else torch.cat(frames)
        return io.NodeOutput(images, float(frame_rate(num_frames, keyframes)))


NODES = [KandinskyVideoDecode]
