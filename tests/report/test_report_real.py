"""The report over real outputs: a diff, a behaviour comparison and a kernel run made here, on
tiny models built in code, opened in headless Chromium (the same checks as the fixture pages)."""

from __future__ import annotations

import pytest

from deltalens.report import SECTION_IDS, build_report
from tests.report.test_report_browser import MEASURE, _check_clean_load, chromium  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    import torch

    from deltalens.behavior import divergence, passk, sample, support
    from deltalens.kernel.run import run_kernel
    from deltalens.lab.tiny_model import build_tiny_llama
    from deltalens.lab.tokenizer import build_char_tokenizer
    from deltalens.results import write_json
    from deltalens.weights.diff import run_diff

    root = tmp_path_factory.mktemp("real")
    tok = build_char_tokenizer()
    dirs = {}
    for name, seed in (("base", 0), ("tuned", 0)):
        model = build_tiny_llama(tokenizer=tok, seed=seed)
        if name == "tuned":  # a dense update touching every matrix, as SFT would
            gen = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.02 * p.abs().mean() * torch.randn(p.shape, generator=gen))
        dirs[name] = root / name
        model.to(torch.bfloat16).save_pretrained(dirs[name])
        tok.save_pretrained(dirs[name])
    run = root / "tuned-vs-base"
    run_diff(dirs["base"], dirs["tuned"], out=run)
    problems = [{"id": f"p{i}", "prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(6)]
    sets = {name: sample(path, problems, n=4, max_new_tokens=4, model_name=name, verifier="numeric", dtype="float32")
            for name, path in dirs.items()}
    write_json(run / "passk.json", passk([sets["base"], sets["tuned"]], base="base", tuned="tuned"))
    write_json(run / "support.json", support(sets["base"], sets["tuned"]))
    write_json(run / "divergence.json", divergence(dirs["base"], dirs["tuned"], problems, n_samples=1,
                                                   max_new_tokens=4, base_name="base", tuned_name="tuned"))
    probes = [{"prompt": p["prompt"], "completion": p["answer"]} for p in problems]
    run_kernel(dirs["base"], dirs["tuned"], probes, out=run)
    return run


def test_report_from_real_outputs_renders_cleanly(chromium, real_run, tmp_path):  # noqa: F811
    page = build_report([real_run], tmp_path / "real.html")
    load = chromium.load(page, width=1280, mobile=False, measure_js=MEASURE)
    (tmp_path / "real-1280.png").write_bytes(load.screenshot)
    _check_clean_load(load, page)
    m = load.measurements
    assert [s["id"] for s in m["sections"]] == list(SECTION_IDS)
    assert len(m["imgs"]) >= 5
    for img in m["imgs"]:
        assert img["complete"] and img["nw"] > 0 and img["nh"] > 0 and img["w"] > 0, img["title"]
    # only the inputs this run does not have are reported absent
    assert 1 <= m["absent"] <= 4  # answer (no claims), kernel trajectory, tracking, claims
