"""Tasks and their closed-loop evaluation: the bundled planar arm (``arm``, ``expert``,
``demos``), Meta-World on MuJoCo (``metaworld``), the task registry (``tasks``), bag recording
of an expert-driven task (``record``) and ``evaluate``. Tasks import no training code.
"""
