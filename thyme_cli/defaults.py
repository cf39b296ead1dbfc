"""thyme's defaults, named once: the flags of ask / batch / eval / replay show them and the settings
classes below the commands (engine, sandbox, question, models) start from them, so they cannot drift.
The jail does not import this (it imports only itself); it receives its timeout from the host."""

from __future__ import annotations

# Sampling: prose at TEMPERATURE (0 = greedy); code is always greedy.
TEMPERATURE = 0.0
TOP_P = 0.9
TOP_K = 50
SEED = 0

STEP_TIMEOUT_S = 30.0  # seconds one code step may run in the sandbox
MAX_TURNS = 5  # code steps the model may take before it must answer
MAX_TOKENS = 2048  # generation budget of one model turn
SAMPLES = 1  # trajectories per question (the answer is their majority vote)

# What to do when a conversation no longer fits the model's context.
CONTEXT_FULL_HINT = "raise --ctx, use fewer or smaller images, or lower --max-image-tokens"
