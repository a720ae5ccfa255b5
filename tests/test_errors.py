"""linreg.errors: the one-line cause of an exception quoted in a message."""

from linreg.errors import first_line


def test_first_line_is_the_first_line_of_the_text_or_the_type():
    assert first_line(ValueError("  bad footer\nat offset 4\n")) == "bad footer"
    assert first_line(OSError()) == "OSError"
    assert first_line(ValueError("x" * 500), limit=300) == "x" * 300


def test_first_line_redacts_credentials():
    text = first_line(ValueError("Unrecognized filesystem type in URI: bogus://KEY:SECRET@host/x?token=abcd"))
    assert "SECRET" not in text and "abcd" not in text
    assert text == "Unrecognized filesystem type in URI: bogus://***@host/x?token=***"
