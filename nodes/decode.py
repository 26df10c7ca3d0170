"""Decode: the video MoVQ turns a video latent into frames, chunk by chunk.

An adapter of ``kv_core.stages.decode.decode_frames``, once per video of the LATENT batch."""
from __future__ import annotations

import torch

from comfy_api.latest import io

from ..kv_core.stages.decode import decode_chunk_sizes, decode_frames
from ..kv_core.video_input import restore_frames
from ..kv_core.stages import Hooks
from . import sockets
from .inputs import CATEGORY, MAX_KEYFRAMES, image_output
from .networks import activation_memory, stage
from .progress import StepProgress
from .video_input import recorded_fit, recorded_fps

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
                sockets.VideoMoVQ.Input("video_movq", tooltip="From Load Kandinsky Video Video MoVQ."),
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
                io.Int.Input("segment_keyframes", default=0, min=0, max=MAX_KEYFRAMES, optional=True,
                             tooltip="A long video (Kandinsky Video Extend) plays at the rate of its first "
                                     "segment: this is that segment's keyframe count. 0: as the latent records "
                                     "it, or a single video. Set it (with num_keyframes = the joined keyframes) "
                                     "after Load Latent of a long video."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The frames, [frames, H, W, 3] in 0..1."),
                io.Float.Output(display_name="fps", tooltip="Frame rate to play the frames at (12, 45, 177 frames "
                                                            "of a 12-keyframe video: 2.18, 8.18, 32.2 fps; an "
                                                            "encoded video: its fps x 4 per Interpolate)."),
            ],
        )

    @classmethod
    def execute(cls, video_movq, latent, chunk_size=0, num_keyframes=0, segment_keyframes=0) -> io.NodeOutput:
        videos = sockets.latent_videos(latent, "Kandinsky Video Decode")
        num_frames, (h, w) = int(videos[0].shape[0]), videos[0].shape[-2:]
        fit, fps = recorded_fit(latent), recorded_fps(latent)
        if fps is None:  # made from keyframes: one video, or a long video at its first segment's rate
            fps = sockets.video_frame_rate(latent, num_frames, int(num_keyframes), int(segment_keyframes),
                                           "Kandinsky Video Decode")
        elif num_keyframes or segment_keyframes:
            raise ValueError(f"Kandinsky Video Decode: this latent is an encoded video at {fps:g} fps, not made "
                             "from keyframes: set num_keyframes and segment_keyframes to 0")
        chunk = int(chunk_size) or None
        sizes = decode_chunk_sizes(num_frames, chunk)
        bar = StepProgress(len(sizes) * len(videos))
        frames = []
        memory = activation_memory(video_movq, max(sizes), h, w)
        with torch.inference_mode(), stage(video_movq, memory_required=memory) as device:
            for i, video in enumerate(videos):
                decoded = decode_frames(video_movq.module, video, chunk_size=chunk,
                                        hooks=Hooks(progress=lambda k, n, done=i * len(sizes): bar(done + k,
                                                                                                    bar.bar.total),
                                                    cancel=bar.cancel, device=device,
                                                    dtype=video_movq.compute_dtype))
                if fit is not None:  # an encoded video: back to the input's size (see Encode Video's fit)
                    decoded = restore_frames(decoded, fit)
                frames.append(image_output(decoded))
                del decoded
        images = frames[0] if len(frames) == 1 else torch.cat(frames)
        return io.NodeOutput(images, float(fps))


NODES = [KandinskyVideoDecode]
