"""The dashboard page (served at /dashboard by trioscheduler/api.py): plain HTML, CSS and JavaScript, no build step."""
