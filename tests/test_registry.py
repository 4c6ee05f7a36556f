import pytest

from orthokit._registry import Registry


def test_register_lookup_aliases_and_capabilities():
    reg = Registry("widget")

    @reg.register("Fast-One", aliases=("f1",), batched=True)
    def fast():
        """Fast widget."""

    @reg.register("slow", batched=False)
    def slow():
        pass

    assert reg.get("fast_one") is fast and reg.get("F1") is fast
    assert reg.names() == ["fast_one", "slow"]
    assert reg.names(batched=True) == ["fast_one"]
    assert reg.capabilities("f1")["batched"] is True
    assert reg.entry("fast_one").doc == "Fast widget."
    assert "f1" in reg and "nope" not in reg and len(reg) == 2


def test_unknown_name_lists_valid_names_and_suggests():
    reg = Registry("widget")
    reg.add("polar_express", object())
    with pytest.raises(ValueError, match="Valid names: polar_express") as ei:
        reg.get("polar_expres")
    assert "Did you mean" in str(ei.value)
    with pytest.raises(TypeError):
        reg.get(3)


def test_duplicate_registration_rejected():
    reg = Registry("widget")
    reg.add("a", 1, aliases=("b",))
    with pytest.raises(ValueError, match="already registered"):
        reg.add("b", 2)
