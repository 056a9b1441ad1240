"""The few Frappe exceptions the fake raises, named as Frappe names them."""


class ValidationError(Exception):
    pass


class DoesNotExistError(ValidationError):
    pass


class PermissionError(Exception):  # shadows the builtin, as Frappe does
    pass


class IncorrectSitePath(Exception):
    pass
