"""Qt pieces shared by the three desktop apps: worker thread, dialogs, settings, pickers, plots."""
