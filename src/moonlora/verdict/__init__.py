"""The verdict stage: the plan's decision criteria and the reports (Markdown, HTML)."""
