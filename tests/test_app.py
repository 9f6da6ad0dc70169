"""`moe-audio app`: the page's logic called directly (quick), and the page driven in a real headless Chromium (slow).

The browser test needs Chromium (`apt-get install chromium`, at /usr/bin/chromium) and the `playwright` package
(its own browser download is not used). Without Chromium it skips, unless MOE_AUDIO_REQUIRE_BROWSER=1 (as CI sets),
where it fails.
"""

import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytest.importorskip("gradio", reason='the web demo needs Gradio: pip install "moe-audio[app]"')

from modeling_moe_audio.app.page import DemoModel, build_app, launch_app  # noqa: E402
from modeling_moe_audio.app.routing import (clip_routing, corpus_expert_shares, recorded_expert_shares,  # noqa: E402
                                            routing_figure)
from modeling_moe_audio.evaluation.generation import greedy_generate  # noqa: E402
from modeling_moe_audio.processing_moe_audio import SAMPLING_RATE, load_audio  # noqa: E402


QUESTION = "What kind of audio is this? Answer with one word: speech, music or sound."
MAX_NEW_TOKENS = 12


def write_clip(path, seconds=1.7, seed=0):
    """A voiced-like clip: two tones with a slow amplitude envelope and a little noise, at 16 kHz."""
    time_axis = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    noise = np.random.default_rng(seed).normal(0, 0.02, time_axis.size)
    clip = (0.4 * np.sin(2 * np.pi * 220 * time_axis) + 0.2 * np.sin(2 * np.pi * 660 * time_axis)) \
        * np.sin(np.pi * time_axis / seconds) + noise
    soundfile.write(path, clip.astype(np.float32), SAMPLING_RATE)
    return Path(path)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("app-clip") / "clip.wav")


@pytest.fixture(scope="module")
def moe_page_model(tiny_checkpoint):
    return DemoModel(tiny_checkpoint, max_new_tokens=MAX_NEW_TOKENS)


@pytest.fixture(scope="module")
def dense_page_model(tiny_dense_checkpoint):
    return DemoModel(tiny_dense_checkpoint, max_new_tokens=MAX_NEW_TOKENS)


def greedy_answer(page_model, clip_path, question=QUESTION):
    """What `model.generate` gives for the same clip and question, greedy: what the page must show."""
    conversation = [{"role": "user", "content": [
        {"type": "audio", "audio": load_audio(clip_path), "sampling_rate": SAMPLING_RATE},
        {"type": "text", "text": question}]}]
    return greedy_generate(page_model.model, page_model.processor, [conversation], MAX_NEW_TOKENS)[0]


# --- the page's logic, without a browser ------------------------------------------------------------------------------


def test_page_streams_the_greedy_answer_and_draws_the_routing(moe_page_model, clip_path):
    shown = list(moe_page_model.respond(str(clip_path), QUESTION))
    answers = [answer for answer, _, _ in shown]
    expected = greedy_answer(moe_page_model, clip_path)
    assert expected and answers[-1] == expected
    assert len(set(answers)) > 2, f"the answer did not grow in steps: {answers}"
    assert all(expected.startswith(answer) for answer in answers)
    assert shown[-1][1].startswith("Done")
    picture = shown[-1][2]
    assert picture is not None and picture[:8] == b"\x89PNG\r\n\x1a\n"


def test_clip_routing_is_what_the_router_chose(moe_page_model, clip_path):
    """The weights come from the model's outputs; a hook on the router itself says what it really computed."""
    from modeling_moe_audio.modeling_moe_audio import MoEAudioRouter

    recorded = []
    router = next(module for module in moe_page_model.model.modules() if isinstance(module, MoEAudioRouter))
    handle = router.register_forward_hook(lambda module, args, output: recorded.append(output))
    try:
        inputs = moe_page_model.inputs(load_audio(clip_path), QUESTION)
        routing = clip_routing(moe_page_model.model, moe_page_model.processor, inputs)
    finally:
        handle.remove()
    (_, router_weights, router_selected), = recorded
    config = moe_page_model.model.config
    tokens = int((inputs["input_ids"] == config.audio_token_id).sum())
    assert routing.weights.shape == (tokens, config.num_experts)
    assert np.array_equal(routing.selected_experts, router_selected.numpy())
    chosen = np.take_along_axis(routing.weights, routing.selected_experts, axis=1)
    np.testing.assert_allclose(chosen, router_weights.numpy(), rtol=1e-6)
    np.testing.assert_allclose(routing.weights.sum(1), 1.0, rtol=1e-6)
    assert (np.count_nonzero(routing.weights, axis=1) == config.num_experts_per_tok).all()
    assert routing.token_seconds == pytest.approx(0.08)
    assert tokens == int(np.ceil(1.7 / 0.08))  # 1.7 s: 21.25 tokens of 80 ms, the last partial one kept
    np.testing.assert_allclose(routing.shares.sum(), 1.0)


def test_routing_figure_puts_tokens_under_the_waveform(moe_page_model, clip_path):
    clip = load_audio(clip_path)
    routing = clip_routing(moe_page_model.model, moe_page_model.processor, moe_page_model.inputs(clip, QUESTION))
    figure = routing_figure(clip, SAMPLING_RATE, routing, moe_page_model.baseline)
    wave, heat, bars = figure.axes[:3]
    assert wave.get_xlim() == heat.get_xlim()
    (image,) = heat.get_images()
    left, right, _, _ = image.get_extent()
    assert (left, right) == pytest.approx((0, routing.weights.shape[0] * 0.08))
    assert image.get_array().shape == (moe_page_model.model.config.num_experts, routing.weights.shape[0])
    legend = [text.get_text() for text in bars.get_legend().get_texts()]
    assert legend[0] == "this clip" and "even share 1/" in legend[1]  # a fresh checkpoint records no shares


def test_expert_average_comes_from_what_the_checkpoint_recorded(tiny_checkpoint, tmp_path):
    folder = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))
    assert recorded_expert_shares(folder, 8) is None
    # The TensorBoard log, as the training callback writes it (the Trainer prefixes `train/`).
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(folder / "runs" / "run-1")
    for step, shares in ((10, [0.5] + [0.5 / 7] * 7), (20, [0.3] + [0.1] * 7)):
        for expert, share in enumerate(shares):
            writer.add_scalar(f"train/moe/expert_share/e{expert}", share, step)
    writer.close()
    from_tensorboard = recorded_expert_shares(folder, 8)
    np.testing.assert_allclose(from_tensorboard.shares, [0.3] + [0.1] * 7, rtol=1e-6)
    assert "step 20" in from_tensorboard.label
    # trainer_state.json (of the last checkpoint-N) comes first.
    (folder / "checkpoint-40").mkdir()
    history = [{"step": 40, "loss": 1.0}, {"step": 40, **{f"moe/expert_share/e{i}": 0.125 for i in range(8)}}]
    (folder / "checkpoint-40" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    from_state = recorded_expert_shares(folder, 8)
    np.testing.assert_allclose(from_state.shares, [0.125] * 8)
    assert "step 40" in from_state.label and "trainer_state.json" in from_state.label
    page_model = DemoModel(folder)
    np.testing.assert_allclose(page_model.baseline.shares, [0.125] * 8)


def test_expert_average_over_a_corpus(tiny_checkpoint, make_corpus):
    from modeling_moe_audio.analysis.routing import expert_activation
    from modeling_moe_audio.data.manifest import load_rows

    manifest = make_corpus(0, {"train": 6})["train"]
    page_model = DemoModel(tiny_checkpoint, corpus=manifest)
    activation = expert_activation(page_model.model, page_model.processor, load_rows(manifest))
    counts = np.sum([activation["counts"][category] for category in activation["categories"]], axis=0)
    np.testing.assert_allclose(page_model.baseline.shares, counts / counts.sum())
    assert "average over" in page_model.baseline.label
    direct = corpus_expert_shares(page_model.model, page_model.processor, manifest, limit=2)
    assert "2 rows" in direct.label


def test_dense_checkpoint_answers_and_says_it_has_no_experts(dense_page_model, clip_path):
    shown = list(dense_page_model.respond(str(clip_path), QUESTION))
    assert shown[-1][0] == greedy_answer(dense_page_model, clip_path)
    assert all(picture is None for _, _, picture in shown)
    assert "no experts" in shown[-1][1] and "dense" in dense_page_model.describe()


@pytest.mark.parametrize("audio, question, message", [
    (None, QUESTION, "No audio"),
    ("clip", "   ", "No question"),
    ("silent", QUESTION, "is silent"),
    ("long", QUESTION, "over this page's limit of 30 s"),
    ("not-audio", QUESTION, "Cannot read the audio file"),
])
def test_bad_input_gets_a_message_in_the_page(moe_page_model, clip_path, tmp_path, audio, question, message):
    if audio == "clip":
        audio = str(clip_path)
    elif audio == "silent":
        audio = tmp_path / "silent.wav"
        soundfile.write(audio, np.zeros(SAMPLING_RATE, dtype=np.float32), SAMPLING_RATE)
    elif audio == "long":
        audio = tmp_path / "long.wav"
        soundfile.write(audio, np.full(31 * 8000, 0.1, dtype=np.float32), 8000)
    elif audio == "not-audio":
        audio = tmp_path / "notes.wav"
        audio.write_text("not audio")
    shown = list(moe_page_model.respond(audio if audio is None else str(audio), question))
    assert len(shown) == 1
    answer, status, picture = shown[0]
    assert answer == "" and picture is None and message in status, status


def test_build_app_wires_the_page(moe_page_model):
    page = build_app(None, demo_model=moe_page_model)
    config = page.get_config_file()
    ids = {component.get("props", {}).get("elem_id") for component in config["components"]}
    assert {"clip", "question", "ask", "answer", "status", "routing"} <= ids
    assert not page.analytics_enabled


def test_a_taken_port_is_named(moe_page_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"Cannot serve the page on 127.0.0.1:{port}: the port is taken"):
            launch_app(build_app(None, demo_model=moe_page_model), port=port, block=False)


def test_app_command_names_a_missing_checkpoint(tmp_path, capsys):
    from modeling_moe_audio.commands.main import main

    with pytest.raises(SystemExit) as exited:
        main(["app", str(tmp_path / "no-such-checkpoint")])
    assert "does not exist" in str(exited.value.code)


# --- the page in a real browser ---------------------------------------------------------------------------------------

# Kept off the network: nothing but the page's own server may be reached (Chromium's own background requests
# are switched off by these flags).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_or_skip() -> str:
    """The Chromium to drive (MOE_AUDIO_CHROMIUM, else `chromium` on the PATH, else /usr/bin/chromium); without it
    the test skips, or fails under MOE_AUDIO_REQUIRE_BROWSER=1."""
    path = os.environ.get("MOE_AUDIO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    missing = None
    if not Path(path).is_file():
        missing = "Chromium is not installed: apt-get install chromium (the browser test drives /usr/bin/chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = 'playwright is not installed: pip install -e ".[test]"'
    if missing:
        if os.environ.get("MOE_AUDIO_REQUIRE_BROWSER") == "1":
            pytest.fail(missing + " (MOE_AUDIO_REQUIRE_BROWSER=1 requires the browser test to run)")
        pytest.skip(missing)
    return path


def test_without_chromium_the_browser_test_skips_or_fails_as_required(monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_AUDIO_CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.delenv("MOE_AUDIO_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        chromium_or_skip()
    monkeypatch.setenv("MOE_AUDIO_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="MOE_AUDIO_REQUIRE_BROWSER=1"):
        chromium_or_skip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def drive_page(page_model, clip_path, question, screenshot=None, timeout_s=120, microphone=False):
    """Serve the page for `page_model`, upload the clip in Chromium (or, with `microphone`, record it from
    Chromium's fake microphone, which plays the file), ask, and wait for the answer. Returns (answer text, routing
    picture's natural size or None, status text, requests to other hosts)."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    page_app = build_app(None, demo_model=page_model)
    launch_app(page_app, port=port, block=False)
    elsewhere = []
    try:
        with sync_playwright() as driver:
            fake_microphone = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                               f"--use-file-for-fake-audio-capture={clip_path}"] if microphone else []
            browser = driver.chromium.launch(executable_path=chromium_or_skip(), args=CHROMIUM_ARGS + fake_microphone)
            context = browser.new_context(viewport={"width": 1280, "height": 1000},
                                          permissions=["microphone"] if microphone else [])

            def only_local(route):
                host = route.request.url.split("/")[2] if "://" in route.request.url else ""
                if host.split(":")[0] in ("127.0.0.1", "localhost"):
                    route.continue_()
                else:
                    elsewhere.append(route.request.url)
                    route.abort()

            context.route("**/*", only_local)
            page = context.new_page()
            page.set_default_timeout(timeout_s * 1000)
            page.goto(f"http://127.0.0.1:{port}/")
            if microphone:
                page.locator("#clip button[aria-label='Record audio']").click()
                page.locator("#clip button:has-text('Record')").first.click()
                # Chromium's fake microphone plays the file in a loop: a second more than the clip holds all of it.
                time.sleep(soundfile.info(clip_path).duration + 1.0)
                page.locator("#clip button:has-text('Stop')").first.click()
            else:
                page.locator("#clip input[type=file]").set_input_files(str(clip_path))
            # The clip is the page's value once Gradio has uploaded it to the server, which is when the download
            # link points at the server's copy; the player shows earlier (right after Stop), and Ask before the upload
            # ends gets no audio.
            page.locator("#clip a[data-testid='download-link'][href*='/gradio_api/file=']").wait_for(state="attached")
            page.locator("#question textarea").fill(question)
            page.locator("#ask").click()
            page.wait_for_function("document.querySelector('#status')?.innerText.includes('Done')"
                                   " || document.querySelector('#status')?.innerText.includes('Cannot')")
            answer = page.locator("#answer textarea").input_value()
            status = page.locator("#status").inner_text()
            size = None
            if page_model.has_experts and "Done" in status:  # a refusal shows no picture: the test reports the status
                page.wait_for_function("document.querySelector('#routing img')?.naturalWidth > 0")
                size = page.evaluate("[document.querySelector('#routing img').naturalWidth,"
                                     " document.querySelector('#routing img').naturalHeight]")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
    finally:
        page_app.close()
    return answer, size, status, elsewhere


@pytest.mark.slow
def test_browser_moe_page(moe_page_model, clip_path, tmp_path, monkeypatch):
    chromium_or_skip()
    # Every connection this process opens (Gradio's server side: analytics, version checks, share tunnels).
    opened, connect = [], socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", lambda sock, address: opened.append(address) or connect(sock, address))
    answer, size, status, elsewhere = drive_page(moe_page_model, clip_path, QUESTION, tmp_path / "moe.png")
    assert all(address[0] in ("127.0.0.1", "::1", "localhost") for address in opened if isinstance(address, tuple)), opened
    assert "Done" in status, status
    assert answer == greedy_answer(moe_page_model, clip_path)
    assert size is not None and size[0] > 400 and size[1] > 200, size
    assert not elsewhere, f"the page tried to reach other hosts: {elsewhere}"
    assert (tmp_path / "moe.png").stat().st_size > 10_000


@pytest.mark.slow
def test_browser_dense_page(dense_page_model, clip_path, tmp_path):
    chromium_or_skip()
    answer, size, status, elsewhere = drive_page(dense_page_model, clip_path, QUESTION, tmp_path / "dense.png")
    assert answer == greedy_answer(dense_page_model, clip_path)
    assert size is None and "no experts" in status
    assert not elsewhere, f"the page tried to reach other hosts: {elsewhere}"


@pytest.mark.slow
def test_browser_records_with_the_microphone(moe_page_model, clip_path, monkeypatch):
    """Chromium's fake microphone plays the clip; what the page recorded is answered like an uploaded file."""
    chromium_or_skip()
    received = []
    read_clip = moe_page_model.read_clip
    monkeypatch.setattr(moe_page_model, "read_clip", lambda audio: received.append(audio) or read_clip(audio))
    answer, size, status, elsewhere = drive_page(moe_page_model, clip_path, QUESTION, microphone=True)
    assert "Done" in status and size is not None, status
    (recording,) = received
    assert soundfile.info(recording).duration > 1.0
    assert answer == greedy_answer(moe_page_model, recording)
    assert not elsewhere
