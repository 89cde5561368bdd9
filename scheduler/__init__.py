"""The scheduler: clock boundaries (opening, closing, unavailabilities) turned into status changes."""
