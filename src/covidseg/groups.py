"""The three groups of COVID-QU-Ex X-rays, in the order every table and array index uses."""

GROUPS = ("COVID-19", "Non-COVID", "Normal")
