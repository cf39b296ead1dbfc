"""`thyme batch`: many questions, one loaded model, a warm sandbox pool, a resumable journal."""
