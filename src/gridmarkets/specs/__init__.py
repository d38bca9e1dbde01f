"""Case files' specs, one module per model, and how each turns a case into its model.

:mod:`gridmarkets.specs.base` holds the parts every case shares (and :class:`Spec`, the
strict pydantic base that the models' own input specs use too); ``specs.<model>`` holds
that model's ``CaseSpec`` and its :class:`~gridmarkets.specs.adapter.CaseAdapter`, which
:func:`gridmarkets.pipeline.run_case` drives. Models import :mod:`gridmarkets.specs.base`
only; nothing here is imported by this package's ``__init__``, so a model importing
``Spec`` does not import the other models.
"""
