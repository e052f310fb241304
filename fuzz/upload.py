r"""Fuzz target: the upload path of the real app, from HTTP body to answer.

The app is the one ``carinspect serve`` runs (``create_app``), with its lifespan (model loaded,
batcher started), driven in-process through Starlette's TestClient. The first byte of an input
picks what the rest is:

- 0: a raw multipart body for ``/predict`` (the boundary is fixed): the body limit, the
  multipart parser (``carinspect.serving.multipart``) and the route's checks see the fuzzer's
  bytes;
- 1: one image file, sent well-formed to ``/predict``: decode, preprocess, batching, the answer;
- 2: the bytes split into two files, sent to ``/predict/batch``.

A 5xx answer or an exception out of the app is a finding, as are libFuzzer's timeouts and memory
limit. The model is the exported folder in CARINSPECT_FUZZ_MODEL (default models/export, which
`scripts/main.sh` writes).

    CARINSPECT_FUZZ_MODEL=models/export python -m fuzz.upload -max_total_time=600 -timeout=10 \
        -rss_limit_mb=3072 -artifact_prefix=fuzz/findings/ fuzz/work/upload
"""

from __future__ import annotations

import os
import sys

import atheris

from fuzz.common import CONTENT_TYPE, ROOT, multipart, seed_corpus

with atheris.instrument_imports(include=["carinspect", "PIL", "multipart", "starlette", "fastapi"]):
    from PIL import Image
    from starlette.testclient import TestClient

    from carinspect.serving.app import create_app
    from carinspect.serving.settings import ServeSettings

    Image.init()  # the format plugins, imported now so they are instrumented too


def _client() -> TestClient:
    model = os.environ.get("CARINSPECT_FUZZ_MODEL", str(ROOT / "models" / "export"))
    settings = ServeSettings(
        MODEL_URI=model, MAX_UPLOAD_MB=2, MAX_PIXELS=4_000_000, MAX_BATCH_FILES=4, POLL_SECONDS=3600
    )
    client = TestClient(create_app(settings))
    client.__enter__()  # the lifespan: load the model, start the batcher; closed at exit
    ready = client.get("/readyz")
    if ready.status_code != 200:
        raise SystemExit(f"fuzz.upload: the model in {model} is not ready: {ready.text}")
    return client


CLIENT: TestClient | None = None


def test_one_input(data: bytes) -> None:
    """One input: a finding is any exception out of here."""
    assert CLIENT is not None
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        r = CLIENT.post("/predict", content=rest, headers={"content-type": CONTENT_TYPE})
    elif mode == 1:
        r = CLIENT.post(
            "/predict", content=multipart([rest]), headers={"content-type": CONTENT_TYPE}
        )
    else:
        half = len(rest) // 2
        body = multipart([rest[:half], rest[half:]], field="files")
        r = CLIENT.post("/predict/batch", content=body, headers={"content-type": CONTENT_TYPE})
    if r.status_code >= 500:
        raise AssertionError(f"mode {mode}: {r.status_code} {r.text[:300]}")
    if r.status_code == 200:
        assert r.json().get("predictions") or r.json().get("label"), r.text[:300]


def _seed(image: bytes) -> bytes:
    return b"\x01" + image


def main(argv: list[str]) -> None:
    """Seed the corpus folder if empty, then hand ``argv`` to libFuzzer."""
    global CLIENT
    seed_corpus(argv, _seed)
    CLIENT = _client()
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
