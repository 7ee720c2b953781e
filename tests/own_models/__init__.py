"""A user's own networks, imported by path (``tests.own_models.tutorial:TutorialNet``)."""
