"""`thyme eval`: benchmark accuracy with and without tools, on top of `thyme batch`.

Reading benchmarks (VLMEvalKit TSV, JSONL manifests), building the multiple-choice prompt,
extracting the chosen option from free text, scoring, and reports. Nothing here imports a model
or a sandbox: the run itself is `thyme_cli.batch.execute.execute_batch`.
"""
