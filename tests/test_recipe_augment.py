"""The recipe's ``augment`` reaches the training batches and the normalisation of a real run,
and is part of the run key (teachers included)."""
from kdbench import cli as kdbench_main
from kdbench import data as kdbench_data
from kdbench.data import Augment, Pipeline
from kdbench.datasets.digits import Digits
from kdbench.run import resolve
from kdbench.spec import Recipe, RunSpec
from kdbench.store import Store

ROTATE = Pipeline(Augment(crop_padding=0, hflip=False, rotate_degrees=20.0), (0.1, 0.1, 0.1), (0.2, 0.2, 0.2))


def test_rotate_recipe_drives_training_batches_and_normalisation(tmp_path, monkeypatch):
    """A grid with ``recipe: {augment: rotate}`` trains teacher and student on rotated batches
    normalised with the rotate pipeline's statistics (digits given distinct ones here)."""
    monkeypatch.setattr(Digits, "pipelines", lambda self: {"crop": Pipeline(self.augment, self.mean, self.std),
                                                           "rotate": ROTATE})
    augments, stats = set(), set()
    real_augment, real_init = kdbench_data.augment_batch, kdbench_data.Normalizer.__init__

    def spy_augment(x, augment, gen):
        augments.add(augment)
        return real_augment(x, augment, gen)

    def spy_init(self, mean, std, device):
        stats.add((tuple(mean), tuple(std)))
        real_init(self, mean, std, device)

    monkeypatch.setattr(kdbench_data, "augment_batch", spy_augment)
    monkeypatch.setattr(kdbench_data.Normalizer, "__init__", spy_init)
    grid = tmp_path / "grid.yaml"
    grid.write_text("dataset: digits\npairs: [resnet8->resnet8]\nmethods: [kd]\nseeds: 1\n"
                    "recipe: {epochs: 1, batch_size: 256, augment: rotate}\nteacher_epochs: 1\n")
    assert kdbench_main.main(["run", "--grid", str(grid), "--no-progress", "--out", str(tmp_path / "out")]) == 0
    assert augments == {ROTATE.augment}
    assert stats == {(ROTATE.mean, ROTATE.std)}
    rows = list(Store(tmp_path / "out").iter_results())
    assert rows and all(r["status"] == "done" and r["recipe"]["augment"] == "rotate" for r in rows)


def test_augment_choice_is_part_of_the_run_and_teacher_keys():
    def spec(augment: str) -> RunSpec:
        return RunSpec(dataset="tiny_imagenet", student="resnet8x4", method="kd", seed=0, teacher="resnet32x4",
                       recipe=Recipe(augment=augment))

    crop, rotate = resolve(spec("crop")), resolve(spec("rotate"))
    assert crop.key != rotate.key and crop.teacher_key != rotate.teacher_key
