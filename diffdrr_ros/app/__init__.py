"""The ``diffdrr-ros`` command (:mod:`.cli`), its shared arguments, the environment report and the demo."""
