"""The studio stage: a local web app to see runs, hear clips, record and correct data, and start training."""
