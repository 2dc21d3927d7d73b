"""The report page without a browser: discovery, absent and bad inputs, CLI, numbers, self-containment."""

from __future__ import annotations

import base64
import html as html_lib
import json
import math
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from deltalens.errors import DeltalensError
from deltalens.report import SECTION_IDS, build_report, discover_runs, write_run_report
from deltalens.report import aggregate as agg
from deltalens.report.html import fmt
from deltalens.report.plotting import new_figure, render
from tests.report.fixtures import (NAN_TENSOR, claims_doc, diff_doc, passk_doc, write_arm, write_json, write_lab)


class _Collect(HTMLParser):
    """Every tag with its attributes, and the text of table rows."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> _Collect:
    p = _Collect()
    p.feed(path.read_text())
    return p


def test_runs_are_found_one_level_down(lab_report):
    lab, _ = lab_report
    runs = discover_runs([lab])
    assert [r.label for r in runs] == ["lab", "lab/grpo-seed0", "lab/grpo-seed1", "lab/sft-seed0", "lab/sft-seed1"]
    assert runs[0].lab_only and not runs[1].lab_only
    assert set(runs[1].data) == {"diff.json", "passk.json", "support.json", "divergence.json", "kernel.json", "tracking.jsonl"}
    from deltalens.report.pairs import stated_models

    assert {(f, b.text, t.text) for f, b, t in stated_models(runs[1])} == {
        ("diff.json", "lab/base", "lab/grpo-seed0"), ("passk.json", "base", "grpo-seed0"),
        ("support.json", "base", "grpo-seed0"), ("divergence.json", "base", "grpo-seed0")}


def test_every_section_and_no_absent_notice_for_a_complete_lab(lab_report):
    _, page = lab_report
    text = page.read_text()
    for sid in SECTION_IDS:
        assert f'<section id="{sid}"' in text
    # the lab's top folder holds only claims.json: it is not an arm, so nothing is "absent" for it
    assert 'class="absent"' not in text
    assert text.count("<figure") >= 12


def test_page_is_self_contained(lab_report):
    _, page = lab_report
    tags = parse(page).tags
    assert not [t for t, _ in tags if t in ("script", "link", "iframe", "object", "embed")]
    for tag, attrs in tags:
        for name in ("src", "href", "srcset", "data", "poster", "action"):
            value = attrs.get(name)
            if value is None:
                continue
            assert value.startswith("data:") or value.startswith("#"), (tag, name, value[:80])
    csp = [a for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]
    assert not re.search(r"url\(\s*['\"]?(?!data:)", page.read_text())  # no CSS fetches either


def _svgs(page: Path) -> list[tuple[str, str, bytes]]:
    out = []
    for tag, attrs in parse(page).tags:
        for name in ("src", "srcset"):
            uri = attrs.get(name, "")
            if uri.startswith("data:image/svg+xml;base64,"):
                out.append((tag, attrs.get("title", ""), base64.b64decode(uri.split(",", 1)[1])))
    return out


def test_every_plot_has_alt_text_a_title_and_axis_labels_wide_and_narrow(lab_report):
    _, page = lab_report
    imgs = [a for t, a in parse(page).tags if t == "img"]
    sources = [a for t, a in parse(page).tags if t == "source"]
    assert len(imgs) == len(sources) >= 12  # each plot drawn twice: desktop and phone layout
    for img in imgs:
        assert len(img["alt"]) > 40 and img["title"]
    for tag, _, svg in _svgs(page):
        text = svg.decode()
        assert "<text" in text
    for img in imgs:
        wide = base64.b64decode(img["src"].split(",", 1)[1]).decode()
        # the title is drawn on the figure itself (long titles wrap onto two lines)
        assert all(word in wide for word in _xml_text(img["title"]).split()), img["title"]


def _xml_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_render_refuses_a_panel_without_labels():
    fig, axes = new_figure(1, 1)
    axes[0][0].plot([0, 1], [0, 1])
    axes[0][0].set_title("t")
    with pytest.raises(ValueError, match="axis labels"):
        render(fig, title="x", alt="x", provenance="x")


def test_figures_state_what_produced_them(lab_report):
    _, page = lab_report
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page.read_text(), flags=re.S)
    joined = "\n".join(captions)
    assert all("Produced by:" in c for c in captions)
    assert "by_k (k = 4)" in joined and "fast mode: top-k vectors from eigh" in joined and "bfloat16" in joined
    assert "n_min 64" in joined and "50 problems" in joined and "k=64" in joined
    assert "sketch mode, dim 4096, 16 probes" in joined and "estimated error 0.021" in joined
    assert "32 prompts × 4 samples" in joined and "tracking.jsonl" in joined
    assert re.search(r"\d+ of the left ones gap-limited", joined)


def _table_row(page: Path, label: str) -> list[str]:
    rows = [r for r in parse(page).rows if r and r[0] == label]
    assert rows, label
    return rows[0]


def test_pooled_numbers_match_an_independent_computation(lab_report):
    lab, page = lab_report
    # columns: quantity, then one per pair in the lab's arm order: sft-seed0, sft-seed1, grpo-seed0, grpo-seed1
    for col, arm in ((1, "sft-seed0"), (3, "grpo-seed0")):
        rows = json.loads((lab / arm / "diff.json").read_text())["tensors"]
        fro2 = np.array([r["delta_fro"] ** 2 if r.get("delta_fro") is not None and r.get("rescale_share") is not None
                         else 0.0 for r in rows if "rescale_share" in r])
        share = np.array([r["rescale_share"] or 0.0 for r in rows if "rescale_share" in r])
        expected = float((share * fro2).sum() / fro2.sum())
        assert _table_row(page, "rescale share (‖Δ‖²-weighted)")[col] == fmt(expected)
        doc = json.loads((lab / arm / "diff.json").read_text())
        assert _table_row(page, "unchanged, bitwise")[col] == f"{100 * doc['summary']['unchanged_bitwise']:.2f}%"


def test_energy_pooling_equals_the_share_of_the_concatenated_update():
    """Pooling rescale shares by ‖Δ‖² gives Σ‖diag UᵀΔV‖² / Σ‖Δ‖² over the tensors (SPEC §5)."""
    rng = np.random.default_rng(0)
    rows, num, den = [], 0.0, 0.0
    for m, n in ((6, 4), (5, 5), (3, 7)):
        w0 = rng.standard_normal((m, n))
        delta = rng.standard_normal((m, n)) * rng.uniform(0.1, 2.0)
        u, _, vt = np.linalg.svd(w0, full_matrices=True)
        d = u.T @ delta @ vt.T
        diag2 = float(np.sum(np.diag(d) ** 2))
        fro2 = float(np.sum(delta ** 2))
        rows.append({"rescale_share": diag2 / fro2, "delta_fro": math.sqrt(fro2), "numel": m * n})
        num += diag2
        den += fro2
    rows.append({"rescale_share": None, "delta_fro": None, "numel": 9})  # a NaN-bearing tensor: left out
    pooled = agg.pool(rows, "rescale_share", "energy")
    assert pooled.value == pytest.approx(num / den, rel=1e-12)
    assert (pooled.used, pooled.skipped) == (3, 1)


def test_parameter_pooling_equals_the_unchanged_count_over_all_parameters():
    rng = np.random.default_rng(1)
    masks = [rng.random(size) < p for size, p in ((100, 0.9), (37, 0.2), (512, 0.5))]
    rows = [{"unchanged_bitwise": float(mk.mean()), "numel": mk.size} for mk in masks]
    pooled = agg.pool(rows, "unchanged_bitwise", "params").value
    assert pooled == pytest.approx(sum(int(mk.sum()) for mk in masks) / sum(mk.size for mk in masks), rel=1e-12)


def test_nan_tensor_is_listed_and_left_out(lab_report):
    _, page = lab_report
    row = _table_row(page, NAN_TENSOR)
    assert row[1:3] == ["grpo-seed0", "3"]
    assert _table_row(page, "tensors with NaN/Inf")[1:] == ["0", "0", "1", "0"]


def test_claims_table_shows_verdicts_and_seed_values(lab_report):
    _, page = lab_report
    row = _table_row(page, "sparsity")
    assert row[2] == "holds"
    assert row[4].startswith(fmt((0.06 + 0.07) / 2))
    assert _table_row(page, "kl")[2] == "contradicted"
    assert _table_row(page, "crossover")[4] == "—"  # sft: no crossover in either seed
    assert _table_row(page, "crossover")[5].startswith("32")


def test_partial_inputs_say_what_is_absent(tmp_path):
    run = tmp_path / "rl-arm"
    write_json(run / "passk.json", passk_doc("rl"))
    page = build_report([run], tmp_path / "r.html")
    text = page.read_text()
    for name in ("diff.json", "support.json", "divergence.json", "kernel.json", "tracking.jsonl", "claims.json"):
        assert re.search(rf"Absent:</strong>.*?<code>{re.escape(name)}</code>", text), name
    assert "deltalens diff BASE TUNED --out DIR" in text
    for sid in SECTION_IDS:
        assert f'<section id="{sid}"' in text


def test_contract_fields_missing_inside_a_file_do_not_fail(tmp_path):
    run = tmp_path / "old-diff"
    doc = diff_doc("rl", 3)
    for row in doc["tensors"]:  # a diff without the spectral metrics (issue 2 only)
        for key in ("by_k", "nss", "rescale_share", "rescale_baseline", "method", "principal_overlap",
                    "low_overlap", "overlap_baseline"):
            row.pop(key, None)
    write_json(run / "diff.json", doc)
    text = build_report([run], tmp_path / "r.html").read_text()
    assert "principal angles were not computed" in text
    assert "Update sparsity" in text


def test_k_as_a_fraction_gives_per_tensor_k(tmp_path):
    """k given as a fraction of min(m, n) resolves per shape: keys differ between tensors."""
    run = tmp_path / "frac"
    doc = diff_doc("sft", 6)
    for row in doc["tensors"]:
        if "by_k" in row:
            k = str(max(1, min(row["shape"]) // 4))
            row["by_k"] = {"1": row["by_k"]["1"], k: row["by_k"]["4"]}
    write_json(run / "diff.json", doc)
    text = build_report([run], tmp_path / "r.html").read_text()
    text = html_lib.unescape(text)
    assert "each tensor's smallest k (k from 1 to 4 by tensor shape)" in text
    assert "each tensor's largest k" in text


def test_side_by_side_runs_from_several_dirs(tmp_path):
    sft = write_arm(tmp_path / "sft", "sft", seed=4)
    rl = write_arm(tmp_path / "rl", "rl", seed=5)
    page = build_report([sft, rl], tmp_path / "both.html")
    pairs = [r for r in parse(page).rows if len(r) == 8 and r[0] in ("sft", "rl")]
    assert [(r[0], r[3]) for r in pairs] == [("sft", "lab/sft"), ("rl", "lab/rl")]
    assert len(_table_row(page, "unchanged, bitwise")) == 3  # quantity + one column per pair


def test_empty_or_missing_run_dir_is_an_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DeltalensError, match="no deltalens outputs found"):
        build_report([tmp_path / "empty"], tmp_path / "r.html")
    with pytest.raises(DeltalensError, match="run directory not found"):
        build_report([tmp_path / "nope"], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_unreadable_input_is_named_and_the_rest_still_shown(tmp_path):
    run = tmp_path / "run"
    write_json(run / "passk.json", passk_doc("rl"))
    (run / "diff.json").write_text('{"tensors": [')
    text = build_report([run], tmp_path / "r.html").read_text()
    assert "unreadable" in text and "not valid JSON" in text and "pass@k with intervals" in text
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "claims.json").write_text("[1, 2]")
    with pytest.raises(DeltalensError, match="unreadable.*expected a JSON object"):
        build_report([only_bad], tmp_path / "r2.html")


def test_malformed_tracking_line_is_reported_with_its_line(tmp_path):
    run = tmp_path / "run"
    write_json(run / "claims.json", claims_doc())
    (run / "tracking.jsonl").write_text('{"step": 1, "tensor": "a"}\n{"step": 2}\n')
    text = build_report([run], tmp_path / "r.html").read_text()
    assert "tracking.jsonl:2: missing field" in text


def test_cli_writes_the_page_and_prints_its_path(run_cli, tmp_path):
    run = tmp_path / "run"
    write_json(run / "passk.json", passk_doc("sft"))
    out = tmp_path / "out" / "page.html"
    code, stdout, stderr = run_cli("report", run, "--out", out)
    assert code == 0, stderr
    assert str(out) in stdout and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["page.html"]  # atomic: no temporary left behind


def test_cli_error_is_one_line_and_exit_2(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, stdout, stderr = run_cli("report", tmp_path / "empty", "--out", tmp_path / "x.html")
    assert code == 2
    assert stderr.startswith("deltalens: error:") and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert not (tmp_path / "x.html").exists()


def test_write_run_report_defaults_into_the_run_dir(tmp_path):
    run = tmp_path / "run"
    write_json(run / "passk.json", passk_doc("rl"))
    path = write_run_report(run)
    assert path == run / "report.html" and path.is_file()


def test_install_script_is_idempotent_when_chromium_is_present():
    from tests.report.browser import find_chromium

    if find_chromium() is None or Path("/usr/bin/chromium") != Path(find_chromium()):
        pytest.skip("Debian's chromium is not installed here")
    script = Path(__file__).resolve().parents[2] / "scripts" / "install-system-deps.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "nothing to do" in out.stdout


def _section_ids(page: Path) -> list[str]:
    return [a["id"] for t, a in parse(page).tags if t == "section"]


def test_the_answer_leads_with_verdict_effect_published_range_and_gates(lab_report):
    _, page = lab_report
    assert _section_ids(page)[:2] == ["answer", "pairs"]
    rows = [r for r in parse(page).rows if r and r[0].startswith("bf16 update sparsity is higher for RL than for SFT")]
    assert rows, "the claim is not in the answer table"
    claim, verdict, effect, published, gates = rows[0]
    assert verdict == "holds"
    assert effect == "0.64 [0.6, 0.68] fraction"
    assert published.startswith("sft 0.006–0.188; grpo 0.36–0.92")
    assert gates == "FAILED: grpo seed 1"  # the fixture's grpo seed 1 failed its gate
    text = page.read_text()
    answer = text[text.index('<section id="answer"'):text.index('<section id="pairs"')]
    for title in ("Principal-angle distributions by arm", "Update sparsity by layer: parameters bitwise unchanged",
                  "pass@k: the base against each arm, with the crossover",
                  "pass@1 gain over the base by arm: real against random reward", "Forgetting against forward KL"):
        assert f'title="{title}"' in answer, title
    assert 'class="absent"' not in answer


def _img(page: Path, title: str) -> dict:
    imgs = [a for t, a in parse(page).tags if t == "img" and a.get("title") == title]
    assert imgs, title
    return imgs[0]


def test_paper_figures_carry_independently_computed_numbers(lab_report):
    from tests.report.fixtures import forgetting_doc, passk_doc

    _, page = lab_report
    # pass@1 gain: tuned − base at k = 1 of the fixture's curves, the same for both seeds of an arm
    for arm, kind in (("grpo", "rl"), ("sft", "sft")):
        doc = passk_doc(kind, name="x")
        gain = doc["models"]["x"]["pass_at_k"][0] - doc["models"]["base"]["pass_at_k"][0]
        assert f"{arm}: mean {fmt(gain)} over 2 seed(s)" in _img(page, "pass@1 gain over the base by arm: real against "
                                                                      "random reward")["alt"]
    # forgetting against KL: Pearson r of the points, from numpy
    pts = forgetting_doc()["models"]
    r = np.corrcoef([p["kl"] for p in pts], [p["accuracy_drop"] for p in pts])[0, 1]
    text = html_lib.unescape(page.read_text())
    assert f"r = {r:.3f}" in text


def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    return path


def test_one_pairs_outputs_in_three_folders_share_one_column(tmp_path):
    from tests.report.fixtures import kernel_doc

    base, tuned, other = (_model_dir(tmp_path / "models" / n) for n in ("base", "tuned", "other"))
    diff = diff_doc("rl", 7)
    diff.update(base=str(base), tuned=str(tuned))
    write_json(tmp_path / "d" / "diff.json", diff)
    kern = kernel_doc("rl", 7)
    kern["base"]["source"], kern["tuned"]["source"] = str(base) + "/", str(tmp_path / "models" / ".." / "models" / "tuned")
    write_json(tmp_path / "k" / "kernel.json", kern)
    write_json(tmp_path / "p" / "passk.json", passk_doc("rl", name="tuned"))  # names only: the folder names
    unrelated = diff_doc("sft", 8)
    unrelated.update(base=str(base), tuned=str(other))
    write_json(tmp_path / "u" / "diff.json", unrelated)
    page = build_report([tmp_path / "d", tmp_path / "k", tmp_path / "p", tmp_path / "u"], tmp_path / "r.html")
    pairs = [r for r in parse(page).rows if r and (r[0].startswith("d") or r[0] == "u") and len(r) == 8]
    assert [r[0] for r in pairs] == ["d + k + p", "u"]
    assert pairs[0][2:4] == ["base", "tuned"]  # below the folder all the models share
    assert pairs[0][6] == "support.json (deltalens support S_BASE.jsonl S_TUNED.jsonl --out DIR)divergence.json " \
                          "(deltalens divergence BASE TUNED --problems P.jsonl --out DIR)tracking.jsonl " \
                          "(deltalens.tracking.UpdateStatsCallback during training (deltalens lab))"
    assert len(_table_row(page, "unchanged, bitwise")) == 3  # the weight summary: quantity + one column per pair
    assert _table_row(page, "mode")[1:] == ["sketch"]  # the kernel table: only the pair that has one


def _weights(path: Path, seed: int) -> Path:
    """A one-file checkpoint folder whose weights are drawn from ``seed``."""
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.randn(4, 4, generator=torch.Generator().manual_seed(seed))}, str(path / "model.safetensors"))
    return path


def test_copies_of_one_checkpoint_share_a_column_and_other_weights_under_one_name_do_not(tmp_path):
    import shutil

    from deltalens.fingerprint import model_fingerprint
    from tests.report.fixtures import divergence_doc, kernel_doc

    base, tuned = _weights(tmp_path / "models" / "base", 0), _weights(tmp_path / "models" / "tuned", 1)
    base_copy, tuned_copy = tmp_path / "copies" / "b0", tmp_path / "copies" / "t1"  # other folders, other names
    shutil.copytree(base, base_copy)
    shutil.copytree(tuned, tuned_copy)
    rerun = _weights(tmp_path / "rerun" / "tuned", 2)  # the same folder name as `tuned`, other weights

    def prints(b, t):
        return {"base": model_fingerprint(b), "tuned": model_fingerprint(t)}

    diff = diff_doc("rl", 7)
    diff.update(base=str(base), tuned=str(tuned), fingerprints=prints(base, tuned))
    kern = kernel_doc("rl", 7)
    kern["base"]["source"], kern["tuned"]["source"] = str(base_copy), str(tuned_copy)
    kern["fingerprints"] = prints(base_copy, tuned_copy)
    div = divergence_doc("rl", name="tuned")  # names only ("base", "tuned"), as divergence records them
    div["fingerprints"] = prints(base, rerun)
    docs = {"d/diff.json": diff, "k/kernel.json": kern, "v/divergence.json": div}

    def columns():
        for name, doc in docs.items():
            write_json(tmp_path / name, doc)
        page = build_report([tmp_path / n.split("/")[0] for n in docs], tmp_path / "r.html")
        return [r for r in parse(page).rows if len(r) == 8 and r[0] != "pair"]

    pairs = columns()
    assert [r[0] for r in pairs] == ["d + k", "v"]
    tuned_sha = diff["fingerprints"]["tuned"]["sha256"]
    assert tuned_sha == kern["fingerprints"]["tuned"]["sha256"] != div["fingerprints"]["tuned"]["sha256"]
    assert pairs[0][3].endswith(f"sha256 {tuned_sha[:12]}")  # the start of the fingerprint below the name
    # the same files without fingerprints: paths and names decide, so the copies part and the names join
    for doc in docs.values():
        del doc["fingerprints"]
    assert [r[0] for r in columns()] == ["d + v", "k"]


def test_names_from_the_inputs_are_escaped(tmp_path):
    doc = diff_doc("rl", 9)
    doc["tensors"][1]["name"] = "model.<script>alert(1)</script>.weight"
    doc["tensors"][1]["nonfinite"] = 2
    doc["tuned"] = "lab/<b>tuned</b>"
    write_json(tmp_path / "run" / "diff.json", doc)
    text = build_report([tmp_path / "run"], tmp_path / "r.html").read_text()
    assert "<script" not in text and "<b>tuned" not in text
    assert "model.&lt;script&gt;alert(1)&lt;/script&gt;.weight" in text


def test_the_labs_stage_marker_is_not_a_claims_file_and_a_folder_is_read_once(tmp_path):
    lab = tmp_path / "lab"
    write_json(lab / "claims.json", claims_doc())
    write_json(lab / "stages" / "claims.json", {"seconds": 1.5, "finished": "2026-11-30"})  # what the lab writes
    write_arm(lab / "analysis" / "sft-seed0", "sft", seed=12, name="sft-seed0")
    runs = discover_runs([lab, lab / "analysis", lab])
    assert [r.label for r in runs] == ["lab", "analysis/sft-seed0"]
    text = build_report([lab, lab / "analysis"], tmp_path / "r.html").read_text()
    assert text.count("3 claims: 1 hold") == 1  # one claims table: the stage marker is not a second one
