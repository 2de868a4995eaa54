"""LiteRT-LM (the PyPI runtime, `litert-lm-api`, CPU): a .litertlm opened by the stock `Engine`, as an Android app
opens it. Text in, text out: the runtime tokenizes with the file's own tokenizer and samples with its own sampler
(the file's TOP_P k=1, i.e. greedy), so what it returns is what a phone's Conversation would say.

`LiteRtLmRuntime.generate` runs a raw prompt (no template), `chat` one user turn through the file's chat template.
Teacher forcing is not offered: `run_text_scoring`'s scores did not match the model's log-probabilities on an fp32
file (a tiny chat model: -108.6 against -99.9 summed over one continuation), so logits come from our interpreter
on the byte-identical .tflite instead.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgedistil.errors import EdgeError
from edgedistil.runtimes.litert import quiet_stderr

NO_CACHE = ":nocache"  # LiteRT-LM's own value for "no .xnnpack_cache beside the model" (its CLI's --cache no)


@dataclasses.dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int  # as the runtime counted them (a start token it added would show here)
    new_tokens: int


class LiteRtLmRuntime:
    def __init__(self, path: Path | str, threads: int = 1):
        import litert_lm

        self._lm = litert_lm
        litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
        path = Path(path)
        if not path.is_file():
            raise EdgeError(f"{path} does not exist", "build it with `edgedistil build --target android`")
        try:
            with quiet_stderr():  # the C++ side announces its accelerators on fd 2
                self.engine = litert_lm.Engine(str(path), backend=litert_lm.Backend.CPU(thread_count=threads),
                                               cache_dir=NO_CACHE, enable_benchmark=True)
        except RuntimeError as e:
            raise EdgeError(f"LiteRT-LM could not open {path} ({e})",
                            "rebuild it with `edgedistil build --target android --force convert`") from None

    def tokenize(self, text: str) -> list[int]:
        return self.engine.tokenize(text)

    def generate(self, prompt: str, new_tokens: int) -> Generation:
        """Greedy continuation of `prompt` as raw text, up to `new_tokens` tokens or a stop token."""
        with self.engine.create_session(apply_prompt_template=False, max_output_tokens=new_tokens) as session:
            session.run_prefill([prompt])
            text = session.run_decode().texts[0]
            info = session.get_benchmark_info()
        return Generation(text, info.last_prefill_token_count, info.last_decode_token_count)

    def chat(self, message: str, new_tokens: int) -> tuple[str, str]:
        """One user turn through the file's chat template: (the prompt the runtime rendered, its reply)."""
        with self.engine.create_conversation(max_output_tokens=new_tokens) as conversation:
            turn = {"role": "user", "content": message}
            rendered = conversation.render_message_to_string(turn)
            reply = conversation.send_message(turn)
        content = reply["content"] if isinstance(reply, dict) else reply.content
        text = content if isinstance(content, str) else "".join(c.get("text", "") for c in content)
        return rendered, text

    def close(self) -> None:
        self.engine.close()
