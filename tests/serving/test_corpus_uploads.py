"""Every case of the malformed-image corpus posted to a real server: refused as ingest refuses it."""

import httpx

from carinspect.serving.service import IMAGE_STATUS
from tests.conftest import Server
from tests.corpus.malformed import cases


def test_predict_refuses_each_case_as_ingest_does(served: Server) -> None:
    wrong: list[str] = []
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for case in cases():
            r = client.post("/predict", files={"file": (case.file_name, case.data, "image/jpeg")})
            if case.reason == "ok":
                ok = r.status_code == 200 and r.json()["filename"] == case.file_name
            else:
                ok = r.status_code == IMAGE_STATUS[case.reason] and r.json()["detail"].startswith(
                    f"{case.file_name}: {case.reason}: "
                )
            if not ok:
                wrong.append(f"{case.name}: want {case.reason}, got {r.status_code} {r.text[:120]}")
        assert client.get("/healthz").status_code == 200
    assert not wrong, "\n".join(wrong)
    assert served.proc.poll() is None
