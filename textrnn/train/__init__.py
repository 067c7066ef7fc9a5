"""The one trainer (``trainer.fit``) and what it owns: the task interface, the training step (CUDA graphs, mixed
precision), the schedule and limits, weight averaging, the resume state, data parallelism, TensorBoard logs.
"""
