"""The study report: findings, figures and a document rendered as self-contained HTML and Markdown."""
