"""One conversion once planned: its shared state (run), its steps in order (steps), the
writing and publishing (writing), and its card (card). ``bids2hf.api.convert`` drives it."""
