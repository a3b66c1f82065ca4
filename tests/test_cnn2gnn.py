"""CNN2GNN and GNN (Jiao, Zhang, Li 2024): the loss, both inductive inference mechanisms,
the ablation graphs, what inference consults, and the method in grids and leaderboards.
The graph pieces themselves (Eq. 3, the GCN, the head) have golden tests in test_gnn.py."""
import dataclasses
import math
import re

import pytest
import torch

from conftest import kdbench_cli
from harness import build, random_image_data
from kdbench.data import EvalData
from kdbench.grid import PAIR_PRESETS, build_grid
from kdbench.registry import METHODS
from kdbench.students.gnn import GNNStudent


def setup_with(method="cnn2gnn", n_train=48, n_test=20, **overrides):
    data = random_image_data(n_train=n_train, n_test=n_test, num_classes=4, size=32)
    setup = build(method, "resnet20", "resnet8", overrides=overrides, batch_size=8, data=data)
    assert setup.method is not None, setup.skip_reason
    setup.method.eval()
    setup.student.eval()
    return setup, data


def test_the_student_is_the_gnn_whatever_the_pair_and_needs_follow_the_input():
    setup, data = setup_with()
    assert isinstance(setup.student, GNNStudent) and setup.s_info.kind == "gnn"
    assert setup.student.gcn.layer1.in_features == 3 * 32 * 32  # flattened pixels
    assert setup.student.head.distances_to(torch.zeros(2, 3072), torch.tensor([0, 1])).shape == (2, 2)
    gnn = METHODS.get("gnn")
    assert not gnn.needs(gnn.Config()).teacher and gnn.needs(gnn.Config(input="teacher_embedding")).teacher
    assert gnn.student_name(gnn.Config()) == "gnn"
    emb, _ = setup_with("gnn", input="teacher_embedding")
    assert emb.student.gcn.layer1.in_features == emb.t_info.embedding_dim == 64  # resnet20's embedding
    assert emb.method.uses_teacher_at_inference and not setup.method.uses_teacher_at_inference


def test_cnn2gnn_loss_is_ce_plus_weighted_kl_with_t_squared():
    setup, _ = setup_with(kd_weight=0.7, temperature=3.0)
    m = setup.method
    s = torch.tensor([[1.0, -0.5, 0.2, 0.0], [0.3, 0.3, -1.0, 2.0]])
    t = torch.tensor([[0.5, 0.5, -0.2, 1.0], [2.0, -1.0, 0.0, 0.1]])
    from kdbench.taps import Outputs

    terms = m.loss(Outputs(logits=s, embedding=s), Outputs(logits=t, embedding=t), None, None)
    expected = 0.0
    for i in range(2):  # KL(softmax(t/T) || softmax(s/T)) summed over classes, mean over rows, x T^2
        ps = [math.exp(v / 3) for v in s[i].tolist()]
        pt = [math.exp(v / 3) for v in t[i].tolist()]
        ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
        expected += sum(b * math.log(b / a) for a, b in zip(ps, pt)) / 2
    assert set(terms) == {"loss_kd"}
    assert terms["loss_kd"].item() == pytest.approx(0.7 * 9 * expected, rel=1e-5)
    assert m.cfg.ce_weight == 1.0  # the trainer adds CE with this weight
    with pytest.raises(ValueError, match="ce_weight \\+ kd_weight must be 1"):
        METHODS.get("cnn2gnn").Config(weighting="hinton", kd_weight=0.5)


def test_a_training_step_learns_the_graph_head_end_to_end():
    setup, _ = setup_with()
    m, student = setup.method, setup.student
    student.train()
    batch = setup.batch()
    with torch.no_grad():
        t = setup.teacher.forward_taps(batch.x)
    s = m.student_forward(student, batch, t, preact=False)
    adj = s.extras["adjacency"]
    assert adj.shape == (len(batch), len(batch))
    loss = torch.nn.functional.cross_entropy(s.logits, batch.y) + sum(m.loss(s, t, batch, None).values())
    loss.backward()
    head_grads = [p.grad for p in student.head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in head_grads)
    assert any(g.abs().sum() > 0 for g in head_grads)


def eval_batches(data, batch_size):
    return list(EvalData(data.test_images, data.test_labels, data.mean, data.std, torch.device("cpu"), batch_size))


@pytest.mark.parametrize("inference", ["batch", "one_by_one"])
def test_both_mechanisms_predict_every_test_sample(inference):
    setup, data = setup_with(inference=inference)
    logits = torch.cat([setup.method.predict(setup.student, setup.teacher, b) for b in eval_batches(data, 8)])
    assert logits.shape == (20, 4) and torch.isfinite(logits).all()


def test_mechanism_2_does_not_depend_on_the_order_within_a_batch():
    setup, data = setup_with(inference="batch")
    [batch] = eval_batches(data, 20)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3))
    shuffled = dataclasses.replace(batch, x=batch.x[perm], y=batch.y[perm], index=batch.index[perm])
    a = setup.method.predict(setup.student, setup.teacher, batch)
    b = setup.method.predict(setup.student, setup.teacher, shuffled)
    assert torch.allclose(a[perm], b, atol=1e-5)
    # ... but it does depend on the batch grouping: the graph joins the samples of a batch
    halves = torch.cat([setup.method.predict(setup.student, setup.teacher, h) for h in eval_batches(data, 10)])
    assert not torch.allclose(a, halves, atol=1e-5)


def spy_on_train_features(method) -> list:
    """Record the training-set indices ``method.train_features`` is asked for."""
    calls = []
    real = method.train_features

    def spy(index, teacher):
        calls.append(index.clone())
        return real(index, teacher)

    method.train_features = spy
    return calls


def test_mechanism_2_uses_the_nearest_training_sample_by_the_head():
    setup, data = setup_with(inference="batch")
    m, student = setup.method, setup.student
    [batch] = eval_batches(data, 20)
    x = m.features(batch.x)
    calls = spy_on_train_features(m)
    m.predict(student, setup.teacher, batch)
    with torch.no_grad():
        expected = student.head(x).argmin(dim=1)  # the most probable p(j|t) is the smallest distance
    # read in the canonical order (by surrogate); which test sample gets which surrogate is
    # checked by test_mechanism_2_logits_by_hand
    assert calls[0].tolist() == sorted(expected.tolist())


def test_mechanism_1_reads_the_test_node_appended_to_a_fixed_training_batch():
    setup, data = setup_with(inference="one_by_one", support_size=7)
    m, student = setup.method, setup.student
    support = m.support()
    assert len(support) == 7 and torch.equal(support, m.support())  # fixed
    [batch] = eval_batches(data, 20)
    logits = m.predict(student, setup.teacher, batch)
    # by hand for test sample 3: the 8-node graph, Eq. 3 on head distances, GCN, its row
    x = m.features(batch.x)
    x_s = m.train_features(support, None)
    with torch.no_grad():
        d = torch.zeros(8, 8)
        d[:7, :7] = student.head(x_s)[:, support]
        d[7, :7] = d[:7, 7] = student.head(x[3:4])[0, support]
        expected = student(torch.cat([x_s, x[3:4]]), adj=student.adjacency_from_distances(d, exclude_self=True))[7]
    assert torch.allclose(logits[3], expected, atol=1e-5)


@pytest.mark.parametrize("graph", ["inner", "euclid"])
def test_ingnn_and_eucgnn_build_the_graph_without_the_head(graph):
    setup, data = setup_with(graph=graph)
    assert setup.student.head is None
    logits = torch.cat([setup.method.predict(setup.student, setup.teacher, b) for b in eval_batches(data, 8)])
    assert logits.shape == (20, 4) and torch.isfinite(logits).all()
    cost = setup.method.inference_cost(setup.student, setup.teacher)
    assert cost["inference_stored_values"] == 0  # nothing from training is consulted


def test_inference_cost_counts_the_head_the_stored_training_set_and_the_teacher():
    setup, _ = setup_with()
    student_params = sum(p.numel() for p in setup.student.parameters())
    head_params = sum(p.numel() for p in setup.student.head.parameters())
    assert head_params > 0
    cost = setup.method.inference_cost(setup.student, setup.teacher)
    assert cost == {"inference_params": student_params, "inference_stored_values": 48 * 3072}
    emb, _ = setup_with("cnn2gnn", input="teacher_embedding")
    cost = emb.method.inference_cost(emb.student, emb.teacher)
    teacher_params = sum(p.numel() for p in emb.teacher.parameters())
    assert cost["inference_params"] == sum(p.numel() for p in emb.student.parameters()) + teacher_params
    assert cost["inference_stored_values"] == 48 * 64


def test_cnn2gnn_runs_once_per_teacher_and_gnn_once_per_grid():
    grid = build_grid(dataset="digits", methods="gnn,cnn2gnn", pairs="resnet20->resnet8,resnet20->resnet14,"
                      "resnet14->resnet8", seeds="1")
    specs = grid.expand()
    c2g = [(s.teacher, s.student) for s in specs if s.method == "cnn2gnn"]
    gnn = [(s.teacher, s.student) for s in specs if s.method == "gnn"]
    assert c2g == [("resnet20", "gnn"), ("resnet14", "gnn")] and gnn == [(None, "gnn")]
    assert "gnn" in METHODS.list() and "cnn2gnn" in METHODS.list()  # so `--methods all` has both


def test_every_pair_of_the_cnn2gnn_preset_is_served_on_cifar100(tmp_path):
    from fake_datasets import write_cifar100
    from harness import cifar_info
    from kdbench.taps import measure

    cls = METHODS.get("cnn2gnn")
    cfg = cls.Config()
    from kdbench.students.gnn import make_gnn_student

    gnn_info = measure(make_gnn_student(3072, 100, 64), (3, 32, 32))
    for teacher, _ in PAIR_PRESETS["cnn2gnn"]:
        assert cls.check(cfg, cifar_info(teacher), gnn_info) is None, teacher
    write_cifar100(tmp_path / "data", n_train=20, n_test=10)
    proc = kdbench_cli("run", "--dataset", "cifar100", "--pairs", "cnn2gnn", "--methods", "gnn,cnn2gnn", "--seeds",
                       "1", "--dry-run", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    teachers = sorted({t for t, _ in PAIR_PRESETS["cnn2gnn"]})
    for t in teachers:
        assert re.search(rf"^cnn2gnn\s+{t}->gnn\s", proc.stdout, re.M), (t, proc.stdout)
    assert re.search(r"^gnn\s+gnn\s", proc.stdout, re.M), proc.stdout


def test_digits_leaderboard_shows_gnn_and_cnn2gnn_in_the_teachers_column(tmp_path):
    proc = kdbench_cli("run", "--methods", "kd,gnn,cnn2gnn", "--dataset", "digits", "--seeds", "1", "--epochs", "1",
                       "--teacher-epochs", "1", "--batch-size", "128", "--no-progress", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    board = proc.stdout.split("wall time")[0]
    for method in ("kd", "gnn", "cnn2gnn"):
        assert re.search(rf"^{method}\s+\d+\.\d\d", board, re.M), board
    assert "cnn2gnn: trains its own student (gnn); the column's CNN student is not used" in board
    from kdbench.store import Store

    rows = {r["method"]: r for r in Store(tmp_path).iter_results() if r["method"] in ("gnn", "cnn2gnn")}
    for r in rows.values():
        assert r["own_student"] and r["student"] == "gnn" and r["student_arch"] == "gnn"
        assert r["inference_stored_values"] == r["num_train"] * 3072 and r["infer_ms_per_image"] > 0
        assert r["inference_params"] == r["student_params"] and not r["uses_teacher_at_inference"]
    assert rows["cnn2gnn"]["teacher"] == "resnet20" and rows["gnn"]["teacher"] is None


def test_optional_head_regression_to_true_squared_distances():
    setup, _ = setup_with(head_aux_weight=0.5)
    m, student = setup.method, setup.student
    batch = setup.batch()
    with torch.no_grad():
        t = setup.teacher.forward_taps(batch.x)
    s = m.student_forward(student, batch, t, preact=False)
    terms = m.loss(s, t, batch, None)
    x = batch.x.flatten(1)
    pred = student.head(x)[:, batch.index]
    true = torch.tensor([[float(((a - b) ** 2).sum()) for b in x] for a in x])
    assert terms["loss_head"].detach().item() == pytest.approx(0.5 * float(((pred.detach() - true) ** 2).mean()), rel=1e-4)


def test_the_gnn_trains_at_a_tenth_of_the_recipe_lr():
    setup, _ = setup_with()
    assert setup.method.main_lr(0.05) == pytest.approx(0.005)
    assert METHODS.get("kd")(METHODS.get("kd").Config(), None, setup.s_info, None).main_lr(0.05) == 0.05


class _Killed(Exception):
    """Stands in for SIGKILL right after an epoch's checkpoint was written."""


def _train_cnn2gnn(run_dir, overrides, kill_after_epoch=None, monkeypatch=None):
    """Build a cnn2gnn run from scratch (as the engine does in a new process) and train it
    for 3 epochs in ``run_dir``; optionally die right after epoch ``kill_after_epoch``'s
    checkpoint. Returns (history, student state_dict, test logits of the last model)."""
    from kdbench.build import build_run
    from kdbench.spec import Recipe, RunSpec
    from kdbench.train import Env, Trainer

    data = random_image_data(n_train=40, n_test=12, num_classes=4, size=8)
    spec = RunSpec(dataset="random", student="resnet8", method="cnn2gnn", seed=3, teacher="resnet8",
                   recipe=Recipe(epochs=3, batch_size=8, lr_milestones=(0.5,)),
                   overrides=tuple(sorted(overrides.items())))
    torch.manual_seed(0)  # the same untrained teacher in every build (the engine loads it from its cache)
    built = build_run(spec, data)
    env = Env(device="cpu", progress=False)
    eval_data = EvalData(data.test_images, data.test_labels, data.mean, data.std, torch.device("cpu"),
                         built.method.eval_batch_size())
    trainer = Trainer(student=built.student, teacher=built.teacher, method=built.method, train_data=built.train_data,
                      eval_data=eval_data, recipe=spec.recipe, lr=0.05, seed=spec.seed, env=env, run_dir=run_dir)
    if kill_after_epoch is not None:
        real = Trainer.log_epoch

        def log_then_die(self, record, *args):
            real(self, record, *args)
            if record["epoch"] == kill_after_epoch:
                raise _Killed

        monkeypatch.setattr(Trainer, "log_epoch", log_then_die)
        with pytest.raises(_Killed):
            trainer.fit()
        monkeypatch.undo()
        return None
    result = trainer.fit()
    built.student.eval()
    logits = torch.cat([built.method.predict(built.student, built.teacher, b) for b in eval_data])
    return result, {k: v.clone() for k, v in built.student.state_dict().items()}, logits


@pytest.mark.parametrize("overrides", [
    {"inference": "batch", "dropout": 0.3},
    {"inference": "one_by_one", "dropout": 0.3, "support_size": 5},
    {"inference": "batch", "m2_candidates": "train_batch", "head_aux_weight": 0.1},
], ids=["mechanism2", "mechanism1", "m2-train-batch"])
def test_a_run_killed_mid_training_resumes_bit_identical(tmp_path, monkeypatch, overrides):
    """Everything the GNN method depends on (graph head and GCN weights, the optimizer,
    dropout's RNG, Mechanism 1's support batch, the stored training set) is in the epoch
    checkpoint or rebuilt identically at build time."""
    full, w_full, logits_full = _train_cnn2gnn(tmp_path / "full", overrides)
    assert full.resumed_from is None
    _train_cnn2gnn(tmp_path / "killed", overrides, kill_after_epoch=1, monkeypatch=monkeypatch)
    resumed, w_resumed, logits_resumed = _train_cnn2gnn(tmp_path / "killed", overrides)
    assert resumed.resumed_from == (0, 1)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("wall_time", "eval_time_s")} for r in h]
    assert strip(resumed.history) == strip(full.history)
    assert w_full.keys() == w_resumed.keys() and any(k.startswith("head.") for k in w_full)
    assert all(torch.equal(w_full[k], w_resumed[k]) for k in w_full)
    assert torch.equal(logits_full, logits_resumed)


def test_mechanism_2_picks_the_nearest_training_sample_under_bf16_autocast():
    """With --amp the head's distances are bf16; the most probable p(j|t) must still be
    the smallest distance, not whichever of two probabilities that round to the same bf16
    value comes first. Distances are set by hand: every test sample is at 0 from training
    sample 7, 0.001 from 5 and 1 from all others, so (k = 10) p(7|t) = 1/1.999 and
    p(5|t) = 0.999/1.999, both 0.5 in bf16."""
    setup, data = setup_with(inference="batch")
    m, student = setup.method, setup.student
    bias = torch.ones(48)
    bias[7], bias[5] = 0.0, 1e-3
    with torch.no_grad():
        student.head.out.weight.zero_()
        student.head.out.bias.copy_(bias)
    [batch] = eval_batches(data, 20)
    calls = spy_on_train_features(m)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m.predict(student, setup.teacher, batch)
    assert torch.isfinite(logits.float()).all()
    assert calls[0].tolist() == [7] * 20


@pytest.mark.parametrize("overrides", [{"inference": "one_by_one", "support_size": 7},
                                       {"inference": "batch", "m2_candidates": "train_batch", "support_size": 7}])
def test_inference_stores_only_the_support_batch_when_only_it_is_consulted(overrides):
    """Mechanism 1 and Mechanism 2 with train_batch candidates read the fixed support batch
    only (7 samples x 3072 pixels), not the n = 48 training samples."""
    setup, data = setup_with(**overrides)
    m = setup.method
    read = []
    real = m.train_features
    m.train_features = lambda index, teacher: (read.append(index.clone()), real(index, teacher))[1]
    for b in eval_batches(data, 8):
        m.predict(setup.student, setup.teacher, b)
    consulted = set(torch.cat(read).tolist())
    assert consulted <= set(m.support().tolist()) and len(m.support()) == 7
    cost = m.inference_cost(setup.student, setup.teacher)
    assert cost["inference_stored_values"] == 7 * 3072


def test_mechanism_2_logits_by_hand():
    """REFERENCE §2, Mechanism 2, recomputed with plain loops: each test sample's training
    surrogate = argmin of its head distances to all n training samples; the graph = Eq. 3
    (self excluded) on the head distances among the surrogates, (P + Pᵀ)/2 + I,
    D^-1/2 Â D^-1/2; the GCN runs on the TEST features with that graph."""
    from test_gnn import naive_eq3

    setup, data = setup_with(inference="batch", k=3)
    m, student = setup.method, setup.student
    [batch] = eval_batches(data, 20)
    logits = m.predict(student, setup.teacher, batch)
    with torch.no_grad():
        x = batch.x.flatten(1).double()
        head = student.head.double()
        d_test = head(x).tolist()
        sur = [min(range(48), key=lambda j: (row[j], j)) for row in d_test]
        train_x = ((data.train_images[sur].double() / 255.0 - 0.5) / 0.25).flatten(1)
        d_s = head(train_x)[:, sur].tolist()
        p = naive_eq3(d_s, 3, exclude_self=True, tie_rule=True)  # duplicate surrogates tie
        b = len(sur)
        a = [[0.5 * (p[i][j] + p[j][i]) + (i == j) for j in range(b)] for i in range(b)]
        deg = [sum(r) for r in a]
        adj = torch.tensor([[a[i][j] / math.sqrt(deg[i] * deg[j]) for j in range(b)] for i in range(b)],
                           dtype=torch.float64)
        gcn = student.gcn.double()
        h = torch.relu(adj @ (x @ gcn.layer1.weight.T) + gcn.layer1.bias)
        want = adj @ (h @ gcn.layer2.weight.T) + gcn.layer2.bias
    assert torch.allclose(logits.double(), want, atol=1e-3), (logits, want)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_mechanism_2_is_order_free_when_test_samples_share_a_surrogate(k):
    """Test samples replaced by the same training sample have identical head distances in
    the approximated batch; with k + 1 or more of them nearest, Eq. 3's tie rule (lower
    column first) used to pick neighbours by their position in the test batch."""
    setup, data = setup_with(inference="batch", k=k)
    m = setup.method
    [batch] = eval_batches(data, 20)
    with torch.no_grad():
        surrogates = setup.student.head(m.features(batch.x)).argmin(1)
    assert len(set(surrogates.tolist())) < 20 - k  # shared surrogates: the case under test
    a = m.predict(setup.student, setup.teacher, batch)
    for seed in range(8):
        perm = torch.randperm(20, generator=torch.Generator().manual_seed(seed))
        shuffled = dataclasses.replace(batch, x=batch.x[perm], y=batch.y[perm], index=batch.index[perm])
        assert torch.allclose(a[perm], m.predict(setup.student, setup.teacher, shuffled), atol=1e-5), seed
