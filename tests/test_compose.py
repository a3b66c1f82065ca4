"""The "+KD" composition (kdbench.compose): X+kd = X's loss + kd_weight·T²·KL_T, α = 1, T = 4,
its own run key, row and list entry; methods that already weight KD are not composed twice."""
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from kdbench.cli import main
from kdbench.compose import CompositionError
from kdbench.config import resolve_config
from kdbench.grid import GridError, build_grid, with_overrides
from kdbench.method import Method
from kdbench.registry import METHODS
from kdbench.run import resolve
from kdbench.store import Store
from kdbench.train import configure_phase, phase_losses

from harness import build
from test_method_crd import naive_kd  # T² · mean_b Σ p_t log(p_t/p_s), from loops
from test_methods_generic import test_one_backward_reaches_every_trainable_parameter_and_never_the_teacher as one_backward


def main_terms(setup):
    main = setup.phases()[-1]
    configure_phase(setup.student, setup.method, main)
    batch = setup.batch()
    s, terms = phase_losses(setup.student, setup.teacher, main, batch, setup.step_info(main), setup.method)
    with torch.no_grad():
        t_logits = setup.teacher(batch.x)
    return s.logits.detach(), t_logits, terms, main


# ---------------------------------------------------------------------------------------------
# the loss
# ---------------------------------------------------------------------------------------------

def test_at_plus_kd_is_at_plus_one_times_t_squared_kl_at_t4():
    plain, composed = build("at"), build("at+kd")
    composed.student.load_state_dict(plain.student.state_dict())
    composed.teacher.load_state_dict(plain.teacher.state_dict())
    _, _, at_terms, _ = main_terms(plain)
    zs, zt, terms, main = main_terms(composed)
    assert set(terms) == {"loss_ce", "loss_at", "loss_kd"}
    assert terms["loss_at"].item() == pytest.approx(at_terms["loss_at"].item(), rel=1e-6)
    assert terms["loss_ce"].item() == pytest.approx(at_terms["loss_ce"].item(), rel=1e-6)  # CE weight unchanged (1)
    assert terms["loss_kd"].item() == pytest.approx(1.0 * naive_kd(zs.tolist(), zt.tolist(), 4.0), rel=1e-5)
    assert main.ce_weight == 1.0


def test_kd_options_of_a_composition_are_overridable():
    setup = build("pkt+kd", overrides={"kd_weight": 0.5, "kd_temperature": 2.0})
    zs, zt, terms, _ = main_terms(setup)
    assert terms["loss_kd"].item() == pytest.approx(0.5 * naive_kd(zs.tolist(), zt.tolist(), 2.0), rel=1e-5)
    with pytest.raises(ValueError, match="kd_temperature must be > 0"):
        resolve_config(METHODS.get("pkt+kd"), {"kd_temperature": 0})
    with pytest.raises(ValueError, match="kd_weight must be >= 0"):
        resolve_config(METHODS.get("pkt+kd"), {"kd_weight": -1})
    with pytest.raises(ValueError, match="feat_weight"):  # the base's own options are the base's
        resolve_config(METHODS.get("pkt+kd"), {"feat_weigth": 1})


def test_crd_plus_kd_sets_crds_own_kd_weight_a_single_kd_term():
    cls = METHODS.get("crd+kd")
    cfg = cls.Config()
    assert (cfg.kd_weight, cfg.temperature) == (1.0, 4.0) and not hasattr(cfg, "kd_temperature")
    setup = build("crd+kd")
    zs, zt, terms, _ = main_terms(setup)
    assert set(terms) == {"loss_ce", "loss_crd", "loss_kd"}
    assert terms["loss_kd"].item() == pytest.approx(naive_kd(zs.tolist(), zt.tolist(), 4.0), rel=1e-5)


def test_ab_plus_kd_keeps_abs_initialisation_and_runs_the_teacher_in_its_main_phase():
    setup = build("ab+kd")
    phases = setup.phases()
    assert [p.name for p in phases] == ["init", "main"]
    assert phases[-1].needs_teacher and not build("ab").phases()[-1].needs_teacher
    _, _, terms, _ = main_terms(setup)
    assert set(terms) == {"loss_ce", "loss_kd"}


@pytest.mark.parametrize("name", ["at+kd", "hkd+kd", "crd+kd", "ab+kd", "cc+kd", "ft+kd", "fitnets+kd"])
def test_compositions_reach_every_trainable_parameter_and_never_the_teacher(name):
    one_backward(name, "resnet20", "resnet8")


# ---------------------------------------------------------------------------------------------
# names, registry, errors
# ---------------------------------------------------------------------------------------------

def test_a_composition_is_a_method_of_its_own():
    cls = METHODS.get("hkd+kd")
    assert cls is METHODS.get("hkd+kd") and "hkd+kd" in METHODS
    assert issubclass(cls, METHODS.get("hkd")) and issubclass(cls, Method)
    assert cls.name == "hkd+kd" and cls.version == METHODS.get("hkd").version
    assert cls.Config.__dataclass_params__.frozen and (cls.__doc__ or "").startswith("hkd combined with KD")
    base = dataclasses.asdict(METHODS.get("hkd").Config())
    assert dataclasses.asdict(cls.Config()) == {**base, "kd_weight": 1.0, "kd_temperature": 4.0}
    assert "hkd+kd" not in METHODS.list() and "hkd+kd" in METHODS.composed()
    assert not any("+" in n for n in build_grid(None, methods="all").method_names())  # `all`: registered methods


@pytest.mark.parametrize("name,reason", [
    ("kd+kd", "kd already weights KD"), ("ccd+kd", "ccd already weights KD"),
    ("cnn2gnn+kd", "cnn2gnn already weights KD"), ("at+kd+kd", "at+kd already weights KD"),
    ("vanilla+kd", "vanilla trains without a teacher"), ("gnn+kd", "gnn trains without a teacher"),
    ("nosuch+kd", "unknown method 'nosuch'"), ("hdk+kd", "Did you mean 'hkd'"),
])
def test_compositions_that_would_weight_kd_twice_or_have_no_teacher_are_errors(name, reason):
    assert name not in METHODS and name not in METHODS.composed()
    with pytest.raises((CompositionError, KeyError), match=re.escape(reason)):
        METHODS.get(name)
    with pytest.raises(GridError, match=re.escape(reason)):
        build_grid(None, methods=name).expand()


def test_list_methods_shows_the_compositions(capsys):
    assert main(["list", "methods"]) == 0
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.strip()}
    for name in ("at+kd", "hkd+kd", "cc+kd", "crd+kd", "pkt+kd", "sp+kd", "rkd+kd"):
        assert name in rows and "kd_weight=1.0" in rows[name]
    assert "kd_temperature=4.0" in rows["at+kd"]
    for name in ("kd+kd", "vanilla+kd", "ccd+kd", "gnn+kd", "cnn2gnn+kd"):
        assert name not in rows
    assert main(["list", "methods", "*+kd"]) == 0
    listed = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[2:]]
    assert listed and all(n.endswith("+kd") for n in listed)


# ---------------------------------------------------------------------------------------------
# grids, keys
# ---------------------------------------------------------------------------------------------

def test_grid_flags_files_and_overrides_name_compositions(tmp_path):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("methods: [at+kd, hkd+kd]\nseeds: 1\noverrides: {at+kd: {kd_weight: 0.5}}\n")
    from kdbench.grid import load_grid_file

    grid = with_overrides(build_grid(load_grid_file(grid_file)), ["hkd+kd.knn=4"])
    specs = {s.method: s for s in grid.expand()}
    assert list(specs) == ["vanilla", "kd", "at+kd", "hkd+kd"]
    assert resolve(specs["at+kd"]).method_config["kd_weight"] == 0.5
    assert resolve(specs["hkd+kd"]).method_config["knn"] == 4
    with pytest.raises(ValueError, match="unknown at\\+kd option"):
        with_overrides(grid, ["at+kd.kd_wieght=1"]).expand()


def test_a_composition_has_its_own_run_key_and_leaves_the_base_key_alone():
    specs = {s.method: s for s in build_grid(None, methods="at,at+kd,crd,crd+kd", seeds=[0]).expand()}
    keys = {m: resolve(s).key for m, s in specs.items()}
    assert len(set(keys.values())) == len(keys)
    at, at_kd = resolve(specs["at"]), resolve(specs["at+kd"])
    assert at_kd.method_config == {**at.method_config, "kd_weight": 1.0, "kd_temperature": 4.0}
    # crd+kd is crd with kd_weight 1: the same options as --set crd.kd_weight=1, but its own row and key
    crd_kd = resolve(specs["crd+kd"])
    crd_set = resolve(dataclasses.replace(specs["crd"], overrides=(("kd_weight", 1.0),)))
    assert crd_kd.method_config == crd_set.method_config and crd_kd.key != crd_set.key


def test_compositions_run_end_to_end_on_digits_with_their_own_rows(tmp_path, capsys):
    code = main(["run", "--methods", "at+kd,hkd+kd", "--pairs", "resnet8->resnet8", "--epochs", "1",
                 "--teacher-epochs", "1", "--seeds", "1", "--batch-size", "128", "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    board = capsys.readouterr().out.split("wall time")[0]
    assert {"at+kd", "hkd+kd"} <= {ln.split()[0] for ln in board.splitlines() if ln.strip()}
    rows = {r["method"]: r for r in Store(tmp_path).iter_results() if r["method"] in ("at+kd", "hkd+kd")}
    assert {m: r["status"] for m, r in rows.items()} == {"at+kd": "done", "hkd+kd": "done"}
    for r in rows.values():
        history = [json.loads(x) for x in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert "loss_kd" in json.dumps(history[-1])
    assert Path(rows["hkd+kd"]["run_dir"]).parts[-2] == "hkd+kd"
