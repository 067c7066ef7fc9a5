"""train --dry-run: the resolved recipe (read back by --config), the parameter count, nothing written."""

import json

from click.testing import CliRunner

from textrnn.cli import cli
from textrnn.config import ModelConfig
from textrnn.lm.model import CharLM

from conftest import TINY_CLI


def test_dry_run_prints_a_recipe_that_config_reads_back_and_trains_nothing(tiny_corpus, tmp_path):
    runner = CliRunner()
    args = ["train", *TINY_CLI, "--corpus", str(tiny_corpus), "--out", str(tmp_path / "run")]
    printed = runner.invoke(cli, [*args, "--dry-run"])
    assert printed.exit_code == 0, printed.output
    assert "hidden_size = 8" in printed.output and "# max_steps = (not set)" in printed.output
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(printed.stdout)
    again = runner.invoke(cli, ["train", "--config", str(recipe), "--dry-run", "--out", str(tmp_path / "run")])
    assert again.stdout == printed.stdout
    as_json = json.loads(runner.invoke(cli, [*args, "--dry-run", "--json"]).stdout)
    model = CharLM(ModelConfig(**as_json["model"]))
    assert as_json["parameters"] == sum(p.numel() for p in model.parameters())
    assert f"# {as_json['parameters']:,} parameters" in printed.output
    assert not (tmp_path / "run").exists()
    refused = runner.invoke(cli, [*args, "--dry-run", "--resume"])
    assert refused.exit_code == 1 and "--dry-run" in refused.output
