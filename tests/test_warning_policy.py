"""The suite's warning policy (pyproject.toml): ours are errors, a third party's internals are not."""

from __future__ import annotations

import warnings

import pytest


class TestWarningPolicy:
    def test_a_deprecation_raised_inside_a_third_party_package_is_ignored(self) -> None:
        """A FutureWarning whose call site is in another package does not fail the suite."""
        for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
            warnings.warn_explicit("old internals", category, "lib.py", 1, module="somelib.internals")

    def test_a_deprecation_raised_in_our_code_is_an_error(self) -> None:
        """A deprecation whose call site is ours (the package, a test) is an error."""
        with pytest.raises(FutureWarning):
            warnings.warn_explicit("ours", FutureWarning, "x.py", 1, module="moe_agents.routing.router")
        with pytest.raises(DeprecationWarning):
            warnings.warn("ours too", DeprecationWarning, stacklevel=1)

    def test_passing_a_deprecated_transformers_argument_is_an_error(self) -> None:
        """transformers' deprecate_kwarg names us only through nn.Module frames; still an error."""
        from transformers.utils.deprecation import deprecate_kwarg

        @deprecate_kwarg("past_key_values", "99.0.0", new_name="cache")
        def forward(cache: object = None) -> object:
            return cache

        with pytest.raises(FutureWarning, match="past_key_values"):
            forward(past_key_values=1)
        assert forward(cache=2) == 2
