"""What people read: the dataset card, summaries, facts, previews and the HTML report."""
