"""Which classes a title names (data.text.ClassNames): the audit's check of labels against their own title."""

from fashiontag.data.text import ClassNames, name_spans

GENDERS = ClassNames(["Men", "Women", "Boys", "Girls", "Unisex"])


def test_a_class_is_named_whatever_its_case_plural_or_possessive():
    assert GENDERS.named_in("Gini and Jony Girl's Veeya Pink Kidswear") == {"Girls"}
    assert GENDERS.named_in("PUMA MEN'S Running Shoes") == {"Men"}
    assert GENDERS.named_in("Palm Tree Kids Boys Printed Tshirts") == {"Boys"}
    assert GENDERS.named_in("Nike Black Cap") == set()
    assert GENDERS.named_in("") == set()
    assert GENDERS.named_in("Women's and Girls' set") == {"Women", "Girls"}  # two named: the audit skips it
    sizes = ClassNames(["S", "M", "L"])
    assert sizes.named_in("Puma Men's Tee") == set() and sizes.named_in("Puma MEN'S Tee Size M") == {"M"}


def test_a_name_is_matched_across_hyphens_and_words_and_the_longest_wins():
    articles = ClassNames(["Tshirts", "Dresses", "Casual Shoes", "Shoes"])
    assert articles.named_in("Puma Men Red T-shirt") == {"Tshirts"}
    assert articles.named_in("Avirate Black Dress") == {"Dresses"}
    assert articles.named_in("Red Tape Men Casual Shoes") == {"Casual Shoes"}  # not "Shoes" too
    colours = ClassNames(["Navy Blue", "Blue", "Off White", "White"])
    assert colours.named_in("Myntra Navy Blue Shirt") == {"Navy Blue"}
    assert colours.named_in("Nike Men Off-White T-shirt") == {"Off White"}
    assert colours.named_in("Roadster White & Blue Shirt") == {"White", "Blue"}
    assert ClassNames(["Jeans"]).named_in("Levis Jean") == {"Jeans"} and ClassNames(["Dress"]).named_in(
        "Dresses") == {"Dress"}


def test_a_name_inside_another_tasks_longer_name_does_not_count():
    usage, articles = ClassNames(["Casual", "Sports"]), ClassNames(["Casual Shoes", "Sports Sandals"])
    spans = name_spans("Woodland Men Khaki Sports Sandals")
    assert usage.named(spans) == {"Sports"}
    others = [(a, b) for a, b, _ in articles.found(spans)]
    assert usage.named(spans, others) == set() and articles.named(spans, others) == {"Sports Sandals"}
    spans = name_spans("Arrow Sports Men Casual Shoes")
    assert usage.named(spans, [(a, b) for a, b, _ in articles.found(spans)]) == {"Sports"}
