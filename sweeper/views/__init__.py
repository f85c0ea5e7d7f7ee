"""What a person looks at: contact sheets, plots, the report and its sections, the compare page, the summary."""
