"""Base class of every config section: unknown keys are errors, every field documents itself."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section. Field docstrings become the field descriptions (`rlpost config fields`, docs/config.md)."""

    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
        protected_namespaces=(),
    )
