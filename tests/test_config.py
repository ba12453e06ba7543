import pytest

from engine.core.config import SyncxrConfig, load_config, parse_config
from engine.core.errors import ConfigError


def test_default_config_loads_and_resolves_relative_paths():
    cfg = load_config()
    assert cfg.corpus.name == "iu-xray"
    assert cfg.extractor.backend == "lexicon"
    # prompt paths resolve against the config file's directory, not the working directory
    assert cfg.resolve(cfg.reports.prompt).parent.name == "prompts"
    assert cfg.resolve(cfg.reports.prompt).parent.parent.name == "configs"


def test_unknown_field_names_file_and_dotted_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("plan:\n  k: 3\n  kk: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "plan.kk" in str(err.value)


def test_wrong_type_names_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("plan:\n  k: three\n")
    with pytest.raises(ConfigError, match=r"field 'plan\.k'"):
        load_config(path)


def test_malformed_yaml_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("plan:\n  k: 3\n   m: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: malformed YAML at line \d+"):
        load_config(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)


def test_resource_bounds_are_checked():
    with pytest.raises(ConfigError, match="max_actors"):
        parse_config({"images": {"resources": {"min_actors": 3, "max_actors": 1}}})


def test_overrides_merge_and_digest_changes():
    base = load_config()
    other = load_config(None, {"plan": {"k": 2}})
    assert other.plan.k == 2 and other.plan.m == base.plan.m
    assert base.digest() != other.digest()
    assert SyncxrConfig().digest() == SyncxrConfig().digest()


def test_shipped_configs_are_found_from_any_directory_and_are_package_data(tmp_path, monkeypatch):
    import fnmatch
    import tomllib
    from pathlib import Path

    from engine.core.config import CONFIG_DIRS, PACKAGED_CONFIGS, find_config_file

    monkeypatch.chdir(tmp_path)  # not the checkout: configs/ is not here
    cfg = load_config("configs/local.yaml")
    assert cfg.reports.backend == "template" and Path(cfg.base_dir) == PACKAGED_CONFIGS
    assert find_config_file("configs/prompts/report_v1.yaml").is_file()
    assert find_config_file("configs/train-local.yaml").parent == CONFIG_DIRS[1]  # beside train/
    assert find_config_file("experiment-local.yaml").parent == CONFIG_DIRS[2]
    assert not find_config_file("configs/absent.yaml").exists()
    root = PACKAGED_CONFIGS.parent.parent
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    names = []
    for config_dir in CONFIG_DIRS:
        package = config_dir.parent
        shipped = [p.relative_to(package).as_posix() for p in config_dir.rglob("*.yaml")]
        assert shipped and all(any(fnmatch.fnmatch(f, g) for g in package_data[package.name]) for f in shipped)
        names += [p.name for p in config_dir.iterdir()]
    # the checkout's configs/ links to every packaged config, and only to them
    assert sorted(p.name for p in (root / "configs").iterdir()) == sorted(names)
    assert all((root / "configs" / n).resolve().exists() for n in names)
