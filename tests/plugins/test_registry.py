"""Plugin discovery through entry points: robustness, conflicts, autoload switch, configs, provenance.

Third-party packages are simulated by fake distributions: a ``*.dist-info`` folder (METADATA
and entry_points.txt) plus modules, written to a temporary folder put on ``sys.path``. That is
all ``importlib.metadata`` needs, so no pip run is involved and each test takes milliseconds.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

import pytest
from fake_distributions import DESCRIPTOR_SOURCE, FakeSite, fake_site  # noqa: F401 - fake_site is a fixture

from mlip_plugins import registry

# ---------------------------------------------------------------------- groups and built-ins
def test_groups_cover_the_extension_points_and_builtins_are_registered():
    for group in ("descriptors", "routers", "long_range", "callbacks", "charge_models", "readouts", "energy_models", "configs"):
        assert registry.GROUPS[group] == f"mlip_plugins.{group}"
    info = registry.plugin_info("descriptors", "radial")
    assert (info.distribution, info.value) == ("mlip-plugins", "mlip_plugins.descriptors.radial:RadialDescriptor")
    assert registry.resolve("readouts", "mlp").__name__ == "MLPReadout"
    # a dotted path works in any group, registered or not
    assert registry.resolve("descriptors", "mlip_plugins.descriptors.radial:RadialDescriptor") is registry.resolve("descriptors", "radial")


def test_unknown_group_lists_the_groups():
    with pytest.raises(registry.PluginError, match="unknown plugin group 'descriptor'.*descriptors"):
        registry.available("descriptor")


# ---------------------------------------------------------------------- third-party plugins
def test_an_installed_distribution_adds_a_plugin(fake_site):
    fake_site.distribution("fake-good", "1.2.3", {"descriptors": {"fake_exp": "fake_good.desc:ExpDescriptor"}},
                      {"fake_good/__init__.py": "", "fake_good/desc.py": DESCRIPTOR_SOURCE.format(cls="ExpDescriptor")})
    assert "fake_exp" in registry.available("descriptors")
    info = registry.plugin_info("descriptors", "fake_exp")
    assert (info.distribution, info.version) == ("fake-good", "1.2.3")
    cls = registry.resolve("descriptors", "fake_exp")
    assert cls.__name__ == "ExpDescriptor" and cls(num_species=2).dim == 3


def test_a_broken_plugin_is_reported_by_name_and_distribution_and_the_others_keep_working(fake_site):
    fake_site.distribution(
        "fake-broken", "0.3.0",
        {"descriptors": {"needs_missing_dep": "fake_broken.dep:Desc", "has_syntax_error": "fake_broken.syntax:Desc",
                         "missing_attr": "fake_broken.dep_ok:Nope", "fine": "fake_broken.dep_ok:Desc"}},
        {"fake_broken/__init__.py": "",
         "fake_broken/dep.py": "import a_package_that_is_not_installed\n",
         "fake_broken/syntax.py": "def broken(:\n",
         "fake_broken/dep_ok.py": DESCRIPTOR_SOURCE.format(cls="Desc")},
    )
    expectations = {
        "needs_missing_dep": "ModuleNotFoundError: No module named 'a_package_that_is_not_installed'",
        "has_syntax_error": "SyntaxError",
        "missing_attr": "AttributeError",
    }
    for name, error in expectations.items():
        with pytest.raises(registry.PluginError) as info:
            registry.resolve("descriptors", name)
        message = str(info.value)
        assert f"plugin {name!r}" in message and "fake-broken 0.3.0" in message and error in message
    # nothing else is affected: the same distribution's good plugin, and the built-ins
    assert registry.resolve("descriptors", "fine").__name__ == "Desc"
    assert registry.resolve("descriptors", "radial").__name__ == "RadialDescriptor"
    assert {"needs_missing_dep", "has_syntax_error", "fine", "radial"} <= set(registry.available("descriptors"))


def test_two_distributions_claiming_one_name_fail_naming_both(fake_site):
    for dist, module in (("fake-alpha", "fake_alpha"), ("fake-beta", "fake_beta")):
        fake_site.distribution(dist, "1.0", {"routers": {"twin": f"{module}.r:Router"}},
                          {f"{module}/__init__.py": "", f"{module}/r.py": "class Router:\n    pass\n"})
    with pytest.raises(registry.PluginError) as info:
        registry.resolve("routers", "twin")
    message = str(info.value)
    assert "registered by several distributions" in message
    assert "fake-alpha 1.0 (fake_alpha.r:Router)" in message and "fake-beta 1.0 (fake_beta.r:Router)" in message
    assert "twin" in registry.available("routers")
    # the way out the message offers: a dotted path
    assert registry.resolve("routers", "fake_beta.r:Router").__module__ == "fake_beta.r"


def test_the_same_distribution_found_twice_is_not_a_conflict(fake_site, tmp_path, monkeypatch):
    entry = {"descriptors": {"twice": "fake_twice:Desc"}}
    files = {"fake_twice.py": DESCRIPTOR_SOURCE.format(cls="Desc")}
    fake_site.distribution("fake-twice", "2.0", entry, files)
    other = tmp_path / "second_site"
    monkeypatch.syspath_prepend(str(other))
    fake_site.distribution("fake-twice", "2.0", entry, files, root=other)
    assert registry.plugin_info("descriptors", "twice").distribution == "fake-twice"


def test_an_unknown_name_lists_the_known_names_and_the_closest_match():
    with pytest.raises(registry.PluginError) as info:
        registry.resolve("descriptors", "radail")
    message = str(info.value)
    assert "unknown plugin 'radail'" in message and "did you mean 'radial'?" in message
    for known in registry.available("descriptors"):
        assert known in message


def test_disable_autoload_hides_third_party_plugins_only(fake_site, monkeypatch):
    fake_site.distribution("fake-hidden", "1.0", {"descriptors": {"hidden": "fake_hidden:Desc"}},
                      {"fake_hidden.py": DESCRIPTOR_SOURCE.format(cls="Desc")})
    assert "hidden" in registry.available("descriptors")
    monkeypatch.setenv(registry.DISABLE_AUTOLOAD_ENV, "1")
    assert "hidden" not in registry.available("descriptors")
    assert "radial" in registry.available("descriptors")
    with pytest.raises(registry.PluginError, match="unknown plugin 'hidden'"):
        registry.resolve("descriptors", "hidden")
    monkeypatch.setenv(registry.DISABLE_AUTOLOAD_ENV, "0")
    assert "hidden" in registry.available("descriptors")


# ---------------------------------------------------------------------- configs (Hydra search path)
def _fake_config_package(fake_site: FakeSite) -> None:
    fake_site.distribution(
        "fake-configs", "0.9",
        {"descriptors": {"fake_cfg_desc": "fake_cfg.desc:CfgDescriptor"}, "configs": {"fake_cfg": "fake_cfg.conf"}},
        {"fake_cfg/__init__.py": "",
         "fake_cfg/desc.py": DESCRIPTOR_SOURCE.format(cls="CfgDescriptor"),
         "fake_cfg/conf/__init__.py": "",
         "fake_cfg/conf/model/descriptor/fake_cfg_desc.yaml": "# @package model.energy.descriptor\nname: fake_cfg_desc\ndim: 5\n"},
    )


def test_search_path_plugin_only_extends_the_mlip_train_config_tree(fake_site):
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

    from hydra_plugins.mlip_plugins_searchpath.searchpath import MlipPluginsSearchPathPlugin, is_core_search_path

    _fake_config_package(fake_site)
    conf_dir = str(Path(importlib.import_module("mlip_plugins.conf").__file__).parent)
    assert is_core_search_path(["pkg://mlip_plugins.conf"]) and is_core_search_path([f"file://{conf_dir}"])
    assert not is_core_search_path(["pkg://hydra.conf", "pkg://someone_else.conf", "file:///tmp"])

    ours = ConfigSearchPathImpl()
    ours.append("hydra", "pkg://hydra.conf")
    ours.append("main", "pkg://mlip_plugins.conf")
    MlipPluginsSearchPathPlugin().manipulate_search_path(ours)
    paths = [(e.provider, e.path) for e in ours.get_path()]
    added = paths.index(("mlip-plugins:fake-configs", "pkg://fake_cfg.conf"))
    assert paths.index(("main", "pkg://mlip_plugins.conf")) < added  # the core tree keeps priority
    assert all(provider.startswith("mlip-plugins:") for provider, _ in paths[2:])

    theirs = ConfigSearchPathImpl()
    theirs.append("main", "pkg://another_app.conf")
    MlipPluginsSearchPathPlugin().manipulate_search_path(theirs)
    assert [e.path for e in theirs.get_path()] == ["pkg://another_app.conf"]


def test_plugin_yaml_joins_the_core_config_groups(fake_site):
    from hydra import compose, initialize_config_module

    _fake_config_package(fake_site)
    with initialize_config_module(version_base=None, config_module="mlip_plugins.conf"):
        cfg = compose("train", overrides=["model=composable", "model/descriptor=fake_cfg_desc"])
    assert cfg.model.energy.descriptor.name == "fake_cfg_desc" and cfg.model.energy.descriptor.dim == 5
    assert cfg.model.energy.readout.name == "mlp"  # the rest of the preset is untouched


# ---------------------------------------------------------------------- provenance
def _model(descriptor: dict, readout: dict | None = None):
    from mlip_plugins.models import build_potential

    return build_potential({"elements": ["Cu", "Au"], "cutoff": 4.0,
                            "energy": {"descriptor": descriptor, "readout": readout or {"name": "linear"}}})


def test_model_plugins_records_nested_plugins_with_distribution_and_version():
    from mlip_plugins.provenance import model_plugins

    model = _model({"name": "radial", "n_max": 2}, {"name": "moe", "num_experts": 2, "router": {"name": "element"}})
    records = {(r["group"], r["name"]): r for r in model_plugins(model)}
    assert set(records) == {("mlip_plugins.descriptors", "radial"), ("mlip_plugins.readouts", "moe"), ("mlip_plugins.routers", "element")}
    version = importlib.metadata.version("mlip-plugins")
    assert all(r["distribution"] == "mlip-plugins" and r["version"] == version for r in records.values())


def test_a_checkpoint_whose_plugin_is_missing_says_what_to_install(fake_site, tmp_path, monkeypatch):
    from mlip_plugins.checkpoint import export_potential, load_potential
    from mlip_plugins.provenance import MissingPluginError, check_plugins_installed, model_plugins

    fake_site.distribution("fake-good", "1.2.3", {"descriptors": {"fake_exp": "fake_good.desc:ExpDescriptor"}},
                      {"fake_good/__init__.py": "", "fake_good/desc.py": DESCRIPTOR_SOURCE.format(cls="ExpDescriptor")})
    model = _model({"name": "fake_exp"})
    records = model_plugins(model)
    assert {"group": "mlip_plugins.descriptors", "name": "fake_exp", "distribution": "fake-good", "version": "1.2.3",
            "target": "fake_good.desc:ExpDescriptor"} in records
    path = export_potential(model, tmp_path / "model.pt")
    assert load_potential(path).energy_model.descriptor.dim == 3

    monkeypatch.setenv(registry.DISABLE_AUTOLOAD_ENV, "1")  # as if fake-good were uninstalled
    with pytest.raises(MissingPluginError) as info:
        check_plugins_installed(records)
    message = str(info.value)
    assert "descriptors plugin 'fake_exp' from fake-good 1.2.3: pip install 'fake-good==1.2.3'" in message
    assert registry.DISABLE_AUTOLOAD_ENV in message
    with pytest.raises(MissingPluginError, match="pip install 'fake-good==1.2.3'"):
        load_potential(path)


def test_another_installed_version_only_warns():
    from mlip_plugins.provenance import check_plugins_installed

    record = {"group": "mlip_plugins.descriptors", "name": "radial", "distribution": "mlip-plugins", "version": "0.0.1", "target": ""}
    with pytest.warns(UserWarning, match="0.0.1 was used to train this model"):
        check_plugins_installed([record])


def test_a_third_party_class_used_by_dotted_path_is_recorded(fake_site):
    from mlip_plugins import provenance

    fake_site.distribution("fake-dotted", "4.5", {}, {"fake_dotted/__init__.py": "", "fake_dotted/desc.py": DESCRIPTOR_SOURCE.format(cls="D")})
    provenance._packages.cache_clear()
    try:
        records = provenance.model_plugins(_model({"name": "fake_dotted.desc:D"}))
    finally:
        provenance._packages.cache_clear()
    assert {"group": "", "name": "fake_dotted.desc:D", "distribution": "fake-dotted", "version": "4.5", "target": "fake_dotted.desc:D"} in records
    missing = dict(records[0], name="gone_pkg.mod:D", target="gone_pkg.mod:D", distribution="gone-pkg")
    with pytest.raises(provenance.MissingPluginError, match="class gone_pkg.mod:D from gone-pkg 4.5: pip install 'gone-pkg==4.5'"):
        provenance.check_plugins_installed([missing])
