"""Hooks are called through pluggy: tryfirst/trylast, wrappers and check_pending behave as
a pytest plugin author expects, and the registry still knows which plugin added what."""

from __future__ import annotations

import pytest

from modelbuild.api import hookimpl
from modelbuild.errors import PluginError
from modelbuild.testing import plugin_host


class _Quantizer:
    format = "gguf"
    version = "1"
    summary = "test quantizer"
    types = ("q9_9",)

    def __init__(self, name: str) -> None:
        self.name = name


def _order(host) -> list[str]:
    return list(host.quantizers._items)  # insertion order: the order implementations ran


def test_tryfirst_runs_before_the_builtins():
    class Early:
        @hookimpl(tryfirst=True)
        def modelbuild_register_quantizers(self, registry):
            assert not registry.names(), "a tryfirst implementation sees an empty registry"
            registry.add(_Quantizer("early"))

    class Late:
        @hookimpl(trylast=True)
        def modelbuild_register_quantizers(self, registry):
            registry.add(_Quantizer("late"))

    host = plugin_host(Early(), Late())
    order = _order(host)
    assert order[0] == "early" and order[-1] == "late"
    assert set(order[1:-1]) == set(plugin_host().quantizers.names()), order  # the built-ins ran in between
    assert host.quantizers.owner("early") == "Early" and host.quantizers.owner("late") == "Late"


def test_wrapper_sees_the_registry_before_and_after_the_others():
    seen: dict[str, list[str]] = {}

    class Wrap:
        @hookimpl(wrapper=True)
        def modelbuild_register_quantizers(self, registry):
            seen["before"] = registry.names()
            result = yield
            seen["after"] = registry.names()
            registry.add(_Quantizer("wrapped-last"))
            return result

    class Old:
        @hookimpl(hookwrapper=True)
        def modelbuild_register_quantizers(self, registry):
            seen["old-before"] = registry.names()
            yield
            seen["old-after"] = registry.names()

    host = plugin_host(Wrap(), Old())
    builtins = set(plugin_host().quantizers.names())
    assert seen["before"] == [] and set(seen["after"]) == builtins
    # Old was registered last, so it wraps Wrap (pluggy's LIFO order), and sees its addition
    assert seen["old-before"] == [] and set(seen["old-after"]) == builtins | {"wrapped-last"}
    assert _order(host)[-1] == "wrapped-last" and host.quantizers.owner("wrapped-last") == "Wrap"


def test_misspelled_hook_is_an_error_naming_the_plugin():
    class Typo:
        @hookimpl
        def modelbuild_register_quantiserz(self, registry):
            pass

    with pytest.raises(PluginError) as info:
        plugin_host(Typo())
    assert info.value.render() == ("plugin Typo implements unknown hook modelbuild_register_quantiserz "
                                   "(did you mean modelbuild_register_quantizers?)")


def test_optional_hook_may_be_unknown():
    class Optional:
        @hookimpl(optionalhook=True)
        def modelbuild_register_widgets(self, registry):
            pass

    assert plugin_host(Optional()).quantizers.names()


def test_wrong_argument_name_is_an_error_naming_the_plugin():
    class BadArgs:
        @hookimpl
        def modelbuild_register_quantizers(self, reg):
            pass

    with pytest.raises(PluginError, match=r"^plugin BadArgs is invalid: .*reg"):
        plugin_host(BadArgs())


def test_a_plugin_bug_names_the_plugin_even_when_it_ran_through_pluggy():
    class Buggy:
        @hookimpl
        def modelbuild_register_targets(self, registry):
            helper(registry)

    def helper(registry):
        raise RuntimeError("boom")

    with pytest.raises(PluginError, match=r"^plugin Buggy failed in modelbuild_register_targets: RuntimeError"):
        plugin_host(Buggy())


def test_two_instances_of_one_class_are_told_apart():
    class Twin:
        def __init__(self, name: str) -> None:
            self.qname = name

        @hookimpl
        def modelbuild_register_quantizers(self, registry):
            registry.add(_Quantizer(self.qname))

    host = plugin_host(Twin("one"), Twin("two"))
    assert (host.quantizers.owner("one"), host.quantizers.owner("two")) == ("Twin", "Twin#2")


def test_a_plugin_adds_its_own_hookspecs():
    """hf-to-gguf declares modelbuild_register_architectures itself (modelbuild_addhooks)."""
    import modelbuild.hookspecs as core

    assert not hasattr(core, "modelbuild_register_architectures")

    class Arch:
        @hookimpl
        def modelbuild_register_architectures(self, registry):
            registry.add(type("A", (), {"name": "mine", "version": "1", "hf_architectures": ("MineForCausalLM",)})())

    host = plugin_host(Arch())
    archs = host.extension("modelbuild_register_architectures", "architecture")
    assert archs.owner("mine") == "Arch" and archs.owner("llama") == "hf-gguf"
    assert "architecture:mine" in next(p for p in host.infos() if p.name == "Arch").provides


def test_an_installed_plugin_passed_again_is_registered_once():
    """A plugin's own tests pass its module to plugin_host whether or not it is installed:
    the built-in safetensors plugin, loaded from its entry point, given again."""
    from modelbuild_plugins import safetensors_format

    host = plugin_host(safetensors_format)
    assert host.quantizers.get("safetensors-cast") is not None
    assert sorted(host.quantizers.names()) == sorted(plugin_host().quantizers.names())
