"""Fixed vocabularies for the synthetic counting tasks (data only)."""

WORDS = (
    "strawberry", "banana", "mississippi", "committee", "bookkeeper", "balloon", "necessary", "parallel",
    "assessment", "occurrence", "accommodate", "embarrass", "millennium", "possession", "tomorrow", "success",
    "address", "coffee", "pepper", "letter", "butterfly", "giraffe", "cinnamon", "programming", "difference",
    "elephant", "umbrella", "vacuum", "referee", "independence", "pineapple", "grammar", "apparent", "beginning",
    "calendar", "definitely", "excellent", "happiness", "irrelevant", "jewellery", "knowledge", "llama",
    "mammal", "noodle", "opossum", "puppet", "quarrel", "raccoon", "scissors", "tattoo", "unnecessary",
    "volleyball", "window", "xylophone", "yellow", "zucchini", "abracadabra", "bubble", "cheese", "daddy",
    "engineer", "football", "guitar", "hippopotamus", "igloo", "jazz", "kangaroo", "lollipop", "mountain",
    "accessory", "afternoon", "alphabet", "apartment", "aquarium", "astronaut", "avocado", "backpack",
    "basketball", "blueberry", "broccoli", "cappuccino", "caterpillar", "chocolate", "classroom",
    "crocodile", "cucumber", "dinosaur", "dolphin", "dragonfly", "eggplant", "envelope", "fireworks", "flamingo",
    "grasshopper", "hamburger", "harmonica", "helicopter", "hummingbird", "important", "jellyfish", "keyboard",
    "ladybug", "lemonade", "librarian", "marshmallow", "microscope", "mosquito", "notebook", "octopus",
    "parachute", "peppermint", "pumpkin", "rattlesnake", "sandwich", "skyscraper", "snowball", "spaghetti",
    "squirrel", "sunflower", "telescope", "thunderstorm", "toothbrush", "tortoise", "treasure", "volcano",
    "watermelon", "wheelbarrow", "woodpecker", "alligator", "barracuda", "buffalo", "carrot", "cotton",
    "daffodil", "eyeglasses", "goggles", "hallway", "kitten", "mattress", "needle", "offer", "passenger",
    "nineteen", "orange", "papaya", "rhythm", "summer", "teepee", "unusual", "waterfall", "assassin",
)

ITEM_SETS = (
    ("apple", "banana", "cherry", "grape", "lemon", "mango", "pear", "plum"),
    ("cat", "dog", "bird", "fish", "horse", "rabbit", "mouse", "goat"),
    ("red", "blue", "green", "yellow", "purple", "orange", "black", "white"),
    ("chair", "table", "lamp", "sofa", "desk", "shelf", "bed", "rug"),
    ("car", "bus", "train", "bike", "boat", "plane", "truck", "taxi"),
)

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


# (larger unit, smaller unit, smaller units per larger unit); names are (singular, plural)
CONVERSIONS = (
    (("kilometer", "kilometers"), ("meter", "meters"), 1000),
    (("meter", "meters"), ("centimeter", "centimeters"), 100),
    (("kilogram", "kilograms"), ("gram", "grams"), 1000),
    (("liter", "liters"), ("milliliter", "milliliters"), 1000),
    (("hour", "hours"), ("minute", "minutes"), 60),
    (("minute", "minutes"), ("second", "seconds"), 60),
    (("day", "days"), ("hour", "hours"), 24),
    (("week", "weeks"), ("day", "days"), 7),
    (("foot", "feet"), ("inch", "inches"), 12),
    (("yard", "yards"), ("foot", "feet"), 3),
    (("dollar", "dollars"), ("cent", "cents"), 100),
)
