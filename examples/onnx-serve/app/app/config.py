"""Minimal config reader: flat `key: value` lines and `#` comments.

PyYAML is deliberately not a dependency, so only this YAML subset is supported.
"""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    model: str = "/opt/app/model.onnx"
    provider: str = "cpu"  # or "cuda": onnxruntime's CUDA execution provider, no CPU fallback


def parse_flat_yaml(text: str) -> dict[str, str]:
    """Parse `key: value` lines; blank lines and comments are ignored."""
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"line {lineno}: expected 'key: value', got {raw!r}")
        # Drop trailing comments (" # ...") and optional surrounding quotes.
        value = value.split(" #", 1)[0].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def load_config(path: str) -> Config:
    data = parse_flat_yaml(Path(path).read_text(encoding="utf-8"))
    unknown = set(data) - {"host", "port", "model", "provider"}
    if unknown:
        raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
    defaults = Config()
    return Config(
        host=data.get("host", defaults.host),
        port=int(data.get("port", defaults.port)),
        model=data.get("model", defaults.model),
        provider=_provider(data.get("provider", defaults.provider)),
    )


def _provider(value: str) -> str:
    if value not in ("cpu", "cuda"):
        raise ValueError(f"provider: {value!r} is not 'cpu' or 'cuda'")
    return value
