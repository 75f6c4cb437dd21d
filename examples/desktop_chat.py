"""A small desktop chat window on edgeslim's Python API (Tk, standard library only).

    python examples/desktop_chat.py model.gguf
    python examples/desktop_chat.py            # converts the bundled demo model first (a few seconds)

What it shows:
  * the model is converted (`edgeslim.convert(..., progress=fn)`), checked
    (`edgeslim.fit`) and loaded (`edgeslim.load`) in a background thread, with progress
    in the status bar; the window answers from the first moment;
  * a reply streams token by token into the window: a worker thread iterates
    `model.stream_chat(...)` and hands pieces to the Tk thread through a queue that
    the Tk loop polls (Tk may only be touched from its own thread);
  * Stop (button or Escape) calls `Generation.cancel()` from the Tk thread; the
    generation ends before its next token.

--trace prints one line per event on stdout (used by tests/test_desktop_chat.py).
"""
from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import threading
import time
import tkinter as tk
from pathlib import Path

import edgeslim

POLL_MS = 20
MAX_REPLY = 400  # tokens a reply may take; less on a small context


class ChatApp:
    """The window; every Tk call happens on the Tk thread, work happens on daemon threads."""

    def __init__(self, root: tk.Tk, model_path: Path | None, trace: bool):
        self.root, self.trace_on = root, trace
        self.events: queue.Queue = queue.Queue()  # (kind, value) from worker threads
        self.model = None
        self.gen = None  # the running edgeslim Generation
        self.history: list[dict] = []
        self.reply = ""
        self.last_tick, self.max_gap = time.monotonic(), 0.0
        self._build()
        threading.Thread(target=self._load, args=(model_path,), daemon=True).start()
        root.after(POLL_MS, self._poll)

    # -- layout ------------------------------------------------------------------------
    def _build(self) -> None:
        r = self.root
        r.title("edgeslim chat")
        r.geometry("720x520")
        self.status = tk.Label(r, text="starting...", anchor="w", fg="#5b6673")
        self.status.pack(side="bottom", fill="x", padx=6, pady=(0, 4))
        bar = tk.Frame(r)
        bar.pack(side="bottom", fill="x", padx=6, pady=6)
        self.log = tk.Text(r, wrap="word", state="disabled", padx=8, pady=8, font=("DejaVu Sans", 11))
        self.log.tag_configure("user", foreground="#1d4f91", spacing1=8)
        self.log.tag_configure("assistant", foreground="#1d232a", spacing1=4)
        self.log.tag_configure("note", foreground="#8a94a0")
        self.log.pack(fill="both", expand=True)
        self.entry = tk.Entry(bar, font=("DejaVu Sans", 11))
        self.entry.pack(side="left", fill="x", expand=True)
        self.entry.bind("<Return>", lambda e: self.send())
        self.send_btn = tk.Button(bar, text="Send", command=self.send, state="disabled")
        self.send_btn.pack(side="left", padx=4)
        self.stop_btn = tk.Button(bar, text="Stop", command=self.stop, state="disabled")
        self.stop_btn.pack(side="left")
        r.bind("<Escape>", lambda e: self.stop())
        self.entry.focus_set()

    def _write(self, text: str, tag: str) -> None:
        self.log.configure(state="normal")
        self.log.insert("end", text, tag)
        self.log.configure(state="disabled")
        self.log.see("end")

    def trace(self, *parts) -> None:
        if self.trace_on:
            print(*parts, flush=True)

    # -- background work ------------------------------------------------------------------
    def _load(self, path: Path | None) -> None:
        try:
            if path is None:
                from edgeslim.demo import DEMO_DIR

                path = Path(tempfile.mkdtemp(prefix="edgeslim-demo-")) / "demo-q8_0.gguf"
                edgeslim.convert(DEMO_DIR, path, quant="Q8_0", progress=lambda done, total, stage, tensor:
                                 self.events.put(("status", f"converting the demo model: {100 * done // total}%")))
            ans = edgeslim.fit(path)
            if not ans.fits:
                raise MemoryError(ans.advice)
            self.events.put(("status", f"loading {path.name} ({ans.fit.weights_bytes >> 20} MiB)..."))
            self.events.put(("ready", edgeslim.load(path)))
        except Exception as err:  # shown in the window, not a traceback in a terminal
            self.events.put(("failed", f"{type(err).__name__}: {err}"))

    def _generate(self, gen) -> None:
        try:
            for piece in gen:
                self.events.put(("piece", piece))
            self.events.put(("done", gen.stats))
        except Exception as err:
            self.events.put(("failed", f"{type(err).__name__}: {err}"))

    # -- the Tk thread --------------------------------------------------------------------
    def _poll(self) -> None:
        now = time.monotonic()
        self.max_gap, self.last_tick = max(self.max_gap, now - self.last_tick), now
        try:
            while True:
                kind, value = self.events.get_nowait()
                getattr(self, f"_on_{kind}")(value)
        except queue.Empty:
            pass
        self.root.after(POLL_MS, self._poll)

    def _on_status(self, text: str) -> None:
        self.status.configure(text=text)

    def _on_ready(self, model) -> None:
        self.model = model
        self.send_btn.configure(state="normal")
        self.status.configure(text=f"ready: {model.hparams.arch}, backend {model.backend}, context {model.n_ctx}")
        self.trace("ready")

    def _on_failed(self, text: str) -> None:
        self._write(f"\n{text}\n", "note")
        self.status.configure(text="error")
        self._idle()
        self.trace("failed", text)

    def _on_piece(self, piece: str) -> None:
        if not self.reply:
            piece = piece.lstrip()
            self.trace("first-piece")
        self.reply += piece
        self._write(piece, "assistant")

    def _on_done(self, stats) -> None:
        stopped = stats.finish_reason == "cancelled"
        if stopped:
            self._write(" [stopped]", "note")
        self._write("\n", "assistant")
        self.history.append({"role": "assistant", "content": self.reply.strip()})
        self.status.configure(text=f"{stats.generated_tokens} tokens, {stats.decode_tps:.0f} tok/s"
                                   + (" (stopped)" if stopped else ""))
        self._idle()
        self.trace("stopped" if stopped else "reply-done", len(self.reply), f"max-ui-gap-ms={1e3 * self.max_gap:.0f}")

    def _idle(self) -> None:
        self.gen = None
        self.send_btn.configure(state="normal" if self.model else "disabled")
        self.stop_btn.configure(state="disabled")

    def send(self) -> None:
        text = self.entry.get().strip()
        if not text or self.model is None or self.gen is not None:
            return
        self.entry.delete(0, "end")
        self.history.append({"role": "user", "content": text})
        self._write(("\n" if self.log.index("end-1c") != "1.0" else "") + f"You: {text}\n", "user")
        self.reply, self.max_gap = "", 0.0
        n_ctx = self.model.n_ctx
        turns, n_prompt = self._recent(n_ctx - min(MAX_REPLY, n_ctx // 4))  # leave a reply at least a quarter
        room = min(MAX_REPLY, n_ctx - n_prompt)
        try:
            self.gen = self.model.stream_chat(turns, max_tokens=max(room, 1), temperature=0.7)
        except edgeslim.EdgeslimError as e:  # e.g. one message longer than the context
            self.history.pop()
            self.status.configure(text=str(e))
            self.trace("failed", e)
            return
        self.send_btn.configure(state="disabled")
        self.stop_btn.configure(state="normal")
        self.status.configure(text="generating...")
        threading.Thread(target=self._generate, args=(self.gen,), daemon=True).start()
        self.trace("sent")

    def _recent(self, budget: int) -> tuple[list[dict], int]:
        """The latest turns whose prompt fits `budget` tokens (older turns drop off, as in llama.cpp's
        and Ollama's chats when the context fills), at least the newest message; and their prompt length."""
        turns = self.history
        n = len(self.model.chat_tokens(turns))
        while len(turns) > 1 and n > budget:
            turns = turns[2:] if len(turns) > 2 else turns[1:]  # drop the oldest user + assistant pair
            n = len(self.model.chat_tokens(turns))
        return turns, n

    def stop(self) -> None:
        if self.gen is not None:
            self.gen.cancel()  # thread-safe; the worker's loop ends before the next token
            self.trace("stop-pressed")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="A desktop chat window on edgeslim's Python API")
    ap.add_argument("model", nargs="?", type=Path, help="GGUF model (default: convert the bundled demo model)")
    ap.add_argument("--trace", action="store_true", help="print events on stdout (for tests)")
    args = ap.parse_args(argv)
    root = tk.Tk()
    ChatApp(root, args.model, args.trace)
    root.mainloop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
