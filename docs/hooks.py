"""mkdocs hook: the table of statuses in docs/status.md, generated from `jaxlm.Status` so that it
cannot drift from the code."""


def on_page_markdown(markdown, page, config, files):
    if "<!-- status table -->" not in markdown:
        return markdown
    from jaxlm import Status

    rows = ["| code | status | success | message |", "|---|---|---|---|"]
    for status in Status:
        message = status.message.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {int(status)} | `{status.name}` | {'yes' if status.success else 'no'} | {message} |")
    return markdown.replace("<!-- status table -->", "\n".join(rows))
