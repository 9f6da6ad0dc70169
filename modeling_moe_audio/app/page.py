"""The page of `moe-audio app`: record or upload a clip, ask a question, watch the greedy answer stream in, and see
which experts the MoE adapter routed each 80 ms audio token of the clip to.

`DemoModel` holds the checkpoint and does the work (testable without a browser); `build_app` lays it out as a
`gr.Blocks`. Gradio's analytics are off and no share link is made: the page needs no internet.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from threading import Thread

import numpy as np

from ..checkpoints.loading import load_checkpoint
from ..processing_moe_audio import SAMPLING_RATE, load_audio
from .routing import (ExpertBaseline, clip_routing, corpus_expert_shares, even_shares, figure_png,
                      recorded_expert_shares, routing_figure)

# Quieter than this peak (about -60 dBFS) a clip is taken as silence: the model would answer about nothing.
SILENCE_PEAK = 1e-3
DENSE_NOTE = ("This checkpoint's adapter is dense (adapter_type={adapter_type!r}): it has no experts, so there is no "
              "routing picture; the answer works as usual.")


class DemoModel:
    """A checkpoint loaded for the page, with the expert shares its clips are compared with."""

    def __init__(self, checkpoint, corpus=None, corpus_limit: int | None = None, max_new_tokens: int = 32,
                 max_audio_seconds: float = 30.0):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1 (got {max_new_tokens}).")
        if not max_audio_seconds > 0:
            raise ValueError(f"max_audio_seconds must be positive (got {max_audio_seconds}).")
        self.checkpoint = str(checkpoint)
        self.model, self.processor = load_checkpoint(checkpoint)
        self.model.eval()
        self.max_new_tokens = max_new_tokens
        self.max_audio_seconds = min(max_audio_seconds, getattr(self.processor, "max_audio_seconds", max_audio_seconds))
        config = self.model.config
        self.has_experts = getattr(config, "adapter_type", None) == "moe"
        self.baseline: ExpertBaseline | None = None
        if self.has_experts:
            if corpus is not None:
                self.baseline = corpus_expert_shares(self.model, self.processor, corpus, limit=corpus_limit)
            else:
                self.baseline = (recorded_expert_shares(checkpoint, config.num_experts)
                                 or even_shares(config.num_experts))
            self.baseline.label = textwrap.fill(self.baseline.label, 40)
        elif corpus is not None:
            raise ValueError(f"--corpus is for MoE checkpoints: {checkpoint} has a dense adapter, with no experts.")

    def describe(self) -> str:
        config = self.model.config
        if self.has_experts:
            shared = " plus a shared expert" if getattr(config, "shared_expert_intermediate_size", 0) else ""
            return (f"**{self.checkpoint}**: MoE adapter, {config.num_experts} experts, top-{config.num_experts_per_tok}"
                    f"{shared}. Answers are greedy (at most {self.max_new_tokens} tokens); clips up to "
                    f"{self.max_audio_seconds:g} s.")
        return (f"**{self.checkpoint}**: " + DENSE_NOTE.format(adapter_type=getattr(config, "adapter_type", None))
                + f" Answers are greedy (at most {self.max_new_tokens} tokens); clips up to {self.max_audio_seconds:g} s.")

    def read_clip(self, audio) -> np.ndarray:
        """The clip the page got (a file path, or `(rate, samples)`), as 16 kHz mono float32, checked."""
        if audio is None or (isinstance(audio, str) and not audio):
            raise ValueError("No audio: record a clip or upload an audio file first.")
        if isinstance(audio, (str, os.PathLike)):
            try:
                clip = load_audio(audio)
            except (OSError, ValueError, RuntimeError) as error:
                raise ValueError(f"Cannot read the audio file {Path(audio).name}: {error}. Upload a wav, flac, ogg "
                                 "or mp3 file.") from None
        else:
            from ..data.audio import decode_audio_item

            rate, samples = audio
            clip = decode_audio_item({"array": samples, "sampling_rate": rate})
        if clip.size == 0:
            raise ValueError("The clip is empty (0 samples): record or upload a longer one.")
        seconds = clip.size / SAMPLING_RATE
        if seconds > self.max_audio_seconds:
            raise ValueError(f"The clip lasts {seconds:.1f} s, over this page's limit of {self.max_audio_seconds:g} s: "
                             "trim it (or start the app with a larger --max_audio_seconds).")
        if not np.isfinite(clip).all():
            raise ValueError("The clip holds NaN or infinite samples: it is not valid audio.")
        peak = float(np.abs(clip).max())
        if peak < SILENCE_PEAK:
            raise ValueError(f"The clip is silent (its loudest sample is {peak:.1e} of full scale, under "
                             f"{SILENCE_PEAK:g}): record or upload one with sound in it.")
        return clip

    @staticmethod
    def read_question(question) -> str:
        question = (question or "").strip()
        if not question:
            raise ValueError("No question: type a question about the clip.")
        return question

    def inputs(self, clip: np.ndarray, question: str):
        conversation = [{"role": "user", "content": [
            {"type": "audio", "audio": clip, "sampling_rate": SAMPLING_RATE},
            {"type": "text", "text": question},
        ]}]
        return self.processor.apply_chat_template(
            conversation, tokenize=True, return_dict=True, add_generation_prompt=True,
        ).to(self.model.device, dtype=self.model.dtype)

    def routing_png(self, clip: np.ndarray, inputs) -> bytes | None:
        """The routing picture of the clip as PNG bytes (None for a dense adapter)."""
        routing = clip_routing(self.model, self.processor, inputs)
        if routing is None:
            return None
        return figure_png(routing_figure(clip, SAMPLING_RATE, routing, self.baseline))

    def stream_answer(self, inputs):
        """The greedy answer, growing: `generate` runs in a thread and a `TextIteratorStreamer` yields its text."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                        timeout=600)
        failure = []

        def generate():
            try:
                self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, streamer=streamer)
            except Exception as error:  # noqa: BLE001 - re-raised in the caller's thread below
                failure.append(error)
                streamer.end()

        thread = Thread(target=generate, daemon=True)
        thread.start()
        answer = ""
        for piece in streamer:
            answer += piece
            yield answer
        thread.join()
        if failure:
            raise failure[0]

    def respond(self, audio, question):
        """What the page shows, as it comes: `(answer, status, routing picture PNG or None)` tuples."""
        try:
            clip = self.read_clip(audio)
            question = self.read_question(question)
        except ValueError as error:
            yield "", f"**Cannot answer:** {error}", None
            return
        inputs = self.inputs(clip, question)
        picture = self.routing_png(clip, inputs)
        status = ("Routing of this clip shown below; answering..." if picture is not None
                  else DENSE_NOTE.format(adapter_type=self.model.config.adapter_type))
        yield "", status, picture
        answer = ""
        for answer in self.stream_answer(inputs):
            yield answer, status, picture
        done = f"Done: {len(clip) / SAMPLING_RATE:.2f} s clip." + ("" if picture is not None else " " + status)
        yield answer, done, picture


def build_app(checkpoint, corpus=None, corpus_limit: int | None = None, max_new_tokens: int = 32,
              max_audio_seconds: float = 30.0, demo_model: DemoModel | None = None):
    """The page as a `gr.Blocks` (start it with `launch_app`, or `.launch()` yourself)."""
    # Off for the whole process, not only for this Blocks: Gradio's module-level helpers read the variable.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio as gr
    except ImportError as error:
        raise ImportError('The web demo needs Gradio: pip install "moe-audio[app]" (or pip install gradio).') from error
    import io

    from PIL import Image

    demo_model = demo_model or DemoModel(checkpoint, corpus, corpus_limit, max_new_tokens, max_audio_seconds)

    def respond(audio, question):
        for answer, status, picture in demo_model.respond(audio, question):
            yield answer, status, Image.open(io.BytesIO(picture)) if picture is not None else None

    with gr.Blocks(title="moe-audio", analytics_enabled=False) as page:
        gr.Markdown("## moe-audio: ask about a clip\n" + demo_model.describe())
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Clip", elem_id="clip",
                                 buttons=["download"])
                question = gr.Textbox(label="Question", placeholder="What kind of audio is this?", lines=1,
                                      elem_id="question")
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                answer = gr.Textbox(label="Answer", interactive=False, lines=2, elem_id="answer")
                status = gr.Markdown(elem_id="status")
        picture = gr.Image(label="Routing of the clip's audio tokens", type="pil", interactive=False,
                           visible=demo_model.has_experts, elem_id="routing", buttons=["download", "fullscreen"])
        for trigger in (ask.click, question.submit):
            trigger(respond, inputs=[audio, question], outputs=[answer, status, picture])
    page.demo_model = demo_model
    return page


def launch_app(page, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page on `host:port`, never with a share link (nothing leaves this machine); with `block`, until
    Ctrl+C."""
    try:
        return _serve(page, host, port, block)
    except KeyboardInterrupt:  # Ctrl+C while starting: stop without a traceback, as Ctrl+C while serving does
        page.close()
        return None


def _serve(page, host: str, port: int, block: bool):
    try:
        served = page.queue().launch(server_name=host, server_port=port, share=False, inbrowser=False,
                                     ssr_mode=False, prevent_thread_lock=True, show_error=True, quiet=True)
    except OSError as error:
        raise OSError(f"Cannot serve the page on {host}:{port}: the port is taken, or the address is not one of "
                      f"this machine's; pass another --port (or --host). ({str(error).split('. ')[0]}.)") from None
    if block:
        print(f"moe-audio app: serving {page.demo_model.checkpoint} on http://{host}:{port} (Ctrl+C stops it)",
              flush=True)
        page.block_thread()
    return served
