"""Our packages live in a directory called operator/ without shadowing the stdlib."""

import importlib


def test_stdlib_operator_module_is_not_shadowed() -> None:
    import operator

    import kubecast_operator

    assert operator.itemgetter("a")({"a": 1}) == 1
    assert operator.__file__ is None or "kubecast" not in operator.__file__
    assert kubecast_operator.__name__ == "kubecast_operator"


def test_every_kubecast_package_imports() -> None:
    for name in ("kubecast_api", "kubecast_operator", "kubecast_worker"):
        assert importlib.import_module(name).__doc__
