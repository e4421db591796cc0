"""Generate tuneforge's built-in review-stars dataset (the default job of `tuneforge train`).

It stands in for the Yelp review-stars task of the Hugging Face fine-tuning guide:
short English reviews of made-up businesses, each labelled "1 star" ... "5 stars".
Every phrase below was written for this project; nothing is downloaded or copied.

How a review is built:
  * pick a domain (restaurant, hotel, plumber, app, ...) and a made-up business name;
  * pick the sentiment levels of its clauses from a per-class recipe, on a scale
    -2 (terrible) .. +2 (superb).  Neighbouring classes share levels, so the label
    is a matter of balance and degree rather than of a single give-away word;
  * turn each level into a clause "<aspect> <predicate>" (e.g. "the risotto" +
    "was a bit bland"), add an optional neutral opening and an overall verdict,
    and join contrasting clauses with "but", "although", "to be fair", ...

The output is deterministic: one seeded random.Random, lists only (never iterate
over a set, whose order depends on string hashing), and a fixed CSV dialect.

Usage:  python scripts/make_reviews.py [--out DIR]
(default DIR: src/tuneforge/default_job next to this script's repository root).
"""

import argparse
import csv
import random
from pathlib import Path

SEED = 20240611
TRAIN_PER_CLASS = 300
TEST_PER_CLASS = 60
LABELS = ["1 star", "2 stars", "3 stars", "4 stars", "5 stars"]
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "src" / "tuneforge" / "default_job"

# ---------------------------------------------------------------------------
# Predicates: what can be said about an aspect, by aspect category and by
# sentiment level.  Tokens: {be} was/were, {bent} wasn't/weren't, {it} it/they,
# {obj} it/them, {its} its/their -- filled in to agree with the subject's number.
# Negations ("wasn't bad at all", "wasn't great") sit on purpose at levels where
# a bag of words reading the adjective alone would guess the wrong side.
# ---------------------------------------------------------------------------
PREDICATES = {
    "food": {
        -2: ["{be} inedible", "{be} stone cold when {it} arrived",
             "tasted like {it} had been sitting under a heat lamp all afternoon",
             "{be} swimming in grease", "{be} so salty I couldn't finish {obj}",
             "{be} frankly disgusting", "{be} burnt on the outside and raw in the middle",
             "{bent} even edible", "{be} the worst I've had anywhere",
             "left my partner feeling ill for the rest of the night",
             "{be} clearly microwaved from frozen"],
        -1: ["{be} a bit bland", "{bent} great", "{be} lukewarm", "{be} underseasoned",
             "{be} on the dry side", "{be} forgettable", "{bent} as fresh as I'd hoped",
             "{be} rather overcooked", "tasted a little tired",
             "{be} smaller than expected and fairly ordinary", "{bent} anything to write home about",
             "{be} a touch too greasy"],
        0: ["{be} okay", "{be} fine, nothing memorable", "{be} decent enough",
            "{be} perfectly edible", "{be} what you'd expect", "{be} alright",
            "{be} hit and miss", "{be} neither here nor there", "{be} standard fare"],
        1: ["{be} pretty good", "{be} not bad at all", "{be} tasty", "{be} nicely cooked",
            "{be} fresh and well presented", "{be} better than I expected", "{be} solid",
            "{be} really enjoyable", "{be} generous and flavourful", "{bent} bad at all"],
        2: ["{be} outstanding", "{be} some of the best I've ever had", "{be} cooked to perfection",
            "{be} absolutely delicious", "{be} incredible, every single bite",
            "{be} bursting with flavour", "{be} genuinely faultless", "blew us away",
            "{be} worth the trip alone", "{be} heavenly"],
    },
    "drink": {
        -2: ["tasted burnt and sour", "{be} undrinkable", "{be} basically hot water",
             "{be} stone cold and bitter", "went straight down the sink",
             "{be} so weak I thought they'd forgotten the coffee"],
        -1: ["{be} a bit weak", "{bent} great", "{be} lukewarm by the time I got {obj}",
             "{be} too milky for my taste", "{be} slightly bitter", "{be} nothing special"],
        0: ["{be} fine", "{be} okay", "{be} drinkable", "{be} about average",
            "{be} as you'd expect from a chain"],
        1: ["{be} good", "{be} nicely made", "{be} smooth", "{bent} bad at all",
            "{be} strong, just how I like {obj}", "{be} properly hot"],
        2: ["{be} perfect", "{be} the best I've had in years", "{be} silky and rich",
            "{be} made with real care", "{be} absolutely gorgeous", "{be} a work of art"],
    },
    "service": {
        -2: ["{be} unbelievably rude", "couldn't have cared less", "ignored us for twenty minutes",
             "rolled their eyes when we asked a simple question", "{be} rude and dismissive",
             "treated us like an inconvenience", "{be} nowhere to be found when we needed help",
             "{be} openly hostile", "argued with me instead of listening"],
        -1: ["{be} a bit off with us", "seemed distracted", "{bent} very attentive",
             "{be} slow to notice us", "got a couple of things wrong",
             "{bent} particularly welcoming", "{be} polite but not very helpful",
             "{be} a little disorganised", "seemed more interested in their phones"],
        0: ["{be} fine", "{be} polite enough", "did the job", "{be} professional, if a little cold",
            "{be} friendly enough", "{be} neither good nor bad", "{be} busy but managed"],
        1: ["{be} friendly", "{be} helpful", "{be} attentive without hovering", "{be} polite and quick",
            "{bent} pushy at all", "{be} lovely", "{be} cheerful and efficient",
            "made us feel welcome"],
        2: ["{be} fantastic", "went above and beyond", "couldn't have been more helpful",
            "{be} warm, funny and genuinely attentive", "made us feel like regulars",
            "{be} brilliant with us", "{be} a credit to the place", "{be} wonderful from start to finish"],
    },
    "support": {
        -2: ["{be} non-existent", "ignored every single email", "{be} a joke", "hung up on me twice",
             "{be} completely useless", "sent the same copy-and-paste reply several times"],
        -1: ["{be} slow to reply", "{be} a bit vague", "took days to get back to me",
             "{bent} very helpful", "{be} patchy", "needed chasing more than once"],
        0: ["{be} okay", "{be} adequate", "{be} fine once I got through", "{be} about average",
            "got there in the end"],
        1: ["{be} helpful", "{be} quick to respond", "sorted things out", "{be} clear and friendly",
            "{bent} bad at all", "kept me updated"],
        2: ["{be} superb", "sorted everything within minutes", "{be} the best I've dealt with",
            "{be} brilliant from start to finish", "kept me in the loop at every step",
            "{be} refreshingly human"],
    },
    "price": {
        -2: ["{be} daylight robbery", "{be} an absolute rip-off", "{be} outrageous for what we got",
             "{be} almost double what we'd been quoted", "{be} insulting given the quality",
             "{be} a scam, plain and simple"],
        -1: ["{be} a bit steep", "{be} on the high side for what you get",
             "{be} more than I'd like to pay", "{bent} great value", "{be} hard to justify",
             "crept up with hidden extras"],
        0: ["{be} about average", "{be} about the going rate", "{be} reasonable-ish",
            "{be} neither cheap nor expensive", "{be} fair enough, I suppose"],
        1: ["{be} fair", "{be} reasonable", "{be} good value", "{bent} bad at all",
            "{be} lower than I expected", "{be} sensible"],
        2: ["{be} a bargain", "{be} incredibly good value", "{be} a steal for the quality",
            "{be} worth every penny", "{be} shockingly low for what you get"],
    },
    "clean": {
        -2: ["{be} filthy", "{be} disgusting, with hair everywhere", "smelled of damp",
             "{be} sticky and clearly hadn't been cleaned in days", "{be} a health hazard",
             "{be} grimy beyond belief"],
        -1: ["could have been cleaner", "{be} a bit grubby", "{be} dusty in the corners",
             "{bent} the cleanest", "{be} looking tired and worn", "{be} a little smelly"],
        0: ["{be} clean enough", "{be} acceptable", "{be} tidy, if a bit dated", "{be} fine",
            "{be} passable"],
        1: ["{be} clean", "{be} clean and tidy", "{be} well kept", "{be} nice and fresh",
            "{bent} dirty at all"],
        2: ["{be} spotless", "{be} immaculate", "{be} sparkling clean",
            "{be} cleaner than my own house", "{be} kept absolutely pristine"],
    },
    "wait": {
        -2: ["took well over an hour", "{be} absolutely ridiculous", "took so long I nearly gave up",
             "{be} an ordeal", "dragged on for ages with no explanation", "{be} beyond a joke"],
        -1: ["{be} longer than I'd like", "took a while", "{be} a little slow", "{bent} exactly quick",
             "dragged a bit", "ran about half an hour late"],
        0: ["{be} about what you'd expect", "{be} okay", "{be} manageable",
            "{be} average for a weekend", "{be} neither quick nor slow"],
        1: ["{be} quick", "{be} reasonable", "{bent} long at all", "{be} pretty fast",
            "{be} shorter than expected", "{be} on time"],
        2: ["{be} lightning fast", "{be} practically instant", "{be} impressively quick",
            "took no time at all", "{be} faster than promised"],
    },
    "space": {
        -2: ["{be} depressing", "{be} grim", "{be} dark, cramped and noisy",
             "felt like a dentist's waiting room", "{be} awful", "{be} falling apart"],
        -1: ["{be} a bit tired", "{be} rather noisy", "{be} a bit cramped", "{bent} very inviting",
             "felt a bit soulless", "{be} too cold"],
        0: ["{be} fine", "{be} pleasant enough", "{be} nothing special", "{be} a bit plain but fine",
            "{be} ordinary"],
        1: ["{be} nice", "{be} cosy", "{be} relaxed", "{be} comfortable", "{be} pleasant",
            "{bent} bad at all"],
        2: ["{be} gorgeous", "{be} stunning", "{be} absolutely lovely", "{be} magical",
            "{be} beautifully done", "{be} a real treat"],
    },
    "feature": {
        -2: ["{be} awful", "{be} dreadful", "{be} a huge letdown", "{be} a total disappointment",
             "{be} the worst part of a bad experience", "{be} an embarrassment"],
        -1: ["{be} underwhelming", "{bent} up to much", "{be} a bit disappointing", "{bent} as advertised",
             "{be} a bit of a letdown", "{be} past {its} best"],
        0: ["{be} fine", "{be} okay", "{be} unremarkable", "{be} nothing special", "{be} alright"],
        1: ["{be} nice", "{be} lovely", "{be} really good", "{bent} bad at all", "{be} a nice touch",
            "{be} better than I'd expected"],
        2: ["{be} stunning", "{be} superb", "{be} the highlight", "{be} a real treat",
            "{be} absolutely brilliant", "{be} out of this world"],
    },
    # Physical things someone bought.
    "goods": {
        -2: ["fell apart within a week", "{be} cheap rubbish", "arrived broken", "{be} broken from day one",
             "{be} nothing like the photos", "{be} a complete disaster", "went straight back"],
        -1: ["{bent} quite as described", "{be} flimsier than {it} looked", "{be} okay at first but didn't last",
             "{be} slightly disappointing", "{bent} great", "{be} a bit cheaply made"],
        0: ["{be} fine", "{be} okay", "{be} acceptable", "{be} alright for the price",
            "{be} as described, nothing more", "{be} average"],
        1: ["{be} good", "{be} well made", "{be} solid", "{be} better than I expected", "{bent} bad at all",
            "held up well", "{be} nicely finished"],
        2: ["{be} perfect", "{be} flawless", "{be} exactly what I wanted", "{be} top quality",
            "{be} beautifully made", "{be} even better than the photos", "{be} built to last"],
    },
    # The result of a job done for the customer (a haircut, a repair).
    "work": {
        -2: ["{be} a complete disaster", "{be} nothing like what I asked for",
             "{be} so badly done I had to pay someone else to fix {obj}", "made things worse than before",
             "{be} shoddy beyond belief", "{be} botched"],
        -1: ["{bent} quite what I asked for", "{be} a bit uneven", "needed redoing after a fortnight",
             "{be} slightly disappointing", "{bent} great", "{be} a bit rushed"],
        0: ["{be} fine", "{be} okay", "{be} acceptable", "{be} average", "{be} alright for the price",
            "{be} passable"],
        1: ["{be} good", "{be} well done", "{be} solid", "{be} neat and tidy", "{be} better than I expected",
            "{bent} bad at all", "held up well"],
        2: ["{be} perfect", "{be} flawless", "{be} exactly what I wanted", "{be} the best I've ever had",
            "{be} beautifully done", "{be} faultless", "{be} done with real skill"],
    },
    "app": {
        -2: ["kept crashing", "{be} completely unusable", "wiped all my data", "{be} riddled with bugs",
             "{be} a total mess", "logged me out every few minutes"],
        -1: ["{be} clunky", "{be} slow to load", "{be} confusing", "{bent} very intuitive",
             "crashed a couple of times", "{be} full of annoying pop-ups"],
        0: ["{be} fine", "{be} usable", "{be} okay once you get used to {obj}", "did the job",
            "{be} pretty basic"],
        1: ["{be} easy to use", "{be} smooth", "{be} clean and simple", "worked well",
            "{be} nicely designed", "{bent} bad at all"],
        2: ["{be} a joy to use", "{be} beautifully designed", "{be} brilliant", "worked flawlessly",
            "{be} miles better than the competition", "{be} genuinely delightful"],
    },
}

# ---------------------------------------------------------------------------
# Domains.  Aspects are (phrase, plural); {person} is filled with a first name.
# Names are composed from two made-up halves so they are varied but fictional.
# ---------------------------------------------------------------------------
PEOPLE = ["Tom", "Priya", "Marco", "Aisha", "Dave", "Sofia", "Liam", "Mei", "Jonas", "Fatima",
          "Callum", "Rosa", "Kwame", "Ellie", "Dmitri", "Nadia", "Owen", "Yuki", "Bea", "Samir"]

DOMAINS = {
    "restaurant": {
        "names": (["Copper", "Juniper", "Saffron", "Old Mill", "Harbour", "Wild Fig", "Blue Heron",
                   "Olive Grove", "Lantern", "Marigold", "Red Fern", "Tamarind"],
                  ["Kitchen", "Table", "Bistro", "Grill", "Trattoria", "Brasserie", "Dining Room"]),
        "kind": ("restaurant", "restaurants"), "verb": "been to",
        "openers": ["Went to {name} for a birthday dinner.", "We booked a table at {name} on a Saturday night.",
                    "Popped into {name} for a quick lunch.", "Tried {name} after a friend recommended it.",
                    "Took my parents to {name} for their anniversary.", "Had dinner at {name} last Thursday."],
        "aspects": {
            "food": [("the risotto", False), ("the steak", False), ("the starters", True), ("the pasta", False),
                     ("the fish of the day", False), ("the desserts", True), ("the lamb", False),
                     ("the curry", False), ("the chips", True), ("the tasting menu", False)],
            "service": [("our waiter", False), ("the staff", True), ("{person}, our server,", False),
                        ("the manager", False), ("the front-of-house team", False)],
            "price": [("the bill", False), ("the prices", True), ("the wine prices", True)],
            "clean": [("the toilets", True), ("our table", False), ("the dining room", False)],
            "wait": [("the wait for our mains", False), ("getting a table", False), ("the wait for the bill", False)],
            "feature": [("the atmosphere", False), ("the decor", False), ("the music", False)],
            "space": [("the terrace", False), ("the dining room", False)],
        },
    },
    "cafe": {
        "names": (["Little", "Bramble", "Fox &", "Morning", "Tin Cup", "Honeybee", "Sparrow", "Oat &"],
                  ["Café", "Coffee House", "Bakehouse", "Roasters", "Kettle", "Crumb"]),
        "kind": ("café", "cafés"), "verb": "been to",
        "openers": ["Stopped at {name} on my way to work.", "Met a friend at {name} for brunch.",
                    "Spent a rainy afternoon working from {name}.", "Grabbed a coffee at {name} this morning.",
                    "First time at {name} today."],
        "aspects": {
            "drink": [("the flat white", False), ("my latte", False), ("the hot chocolate", False),
                      ("the coffee", False), ("the chai", False), ("the iced coffee", False)],
            "food": [("the banana bread", False), ("the sandwiches", True), ("the croissants", True),
                     ("the cakes", True), ("the avocado toast", False), ("the soup", False)],
            "service": [("the barista", False), ("the staff", True), ("{person} behind the counter", False)],
            "price": [("the prices", True), ("a coffee and a cake", False)],
            "feature": [("the vibe", False), ("the music", False), ("the cake selection", False)],
            "space": [("the seating area", False), ("the little garden", False)],
            "wait": [("the queue", False), ("the wait for my order", False)],
            "clean": [("the tables", True), ("the toilet", False)],
        },
    },
    "hotel": {
        "names": (["The Alderley", "Seaview", "Kingsgate", "Willow Bank", "Harrow Point", "The Merrow",
                   "Northcliff", "Stonebridge"],
                  ["Hotel", "Inn", "Lodge", "Suites", "House Hotel"]),
        "kind": ("hotel", "hotels"), "verb": "stayed at",
        "openers": ["Stayed two nights at {name} for a work trip.", "We spent our honeymoon weekend at {name}.",
                    "Booked {name} for a family wedding nearby.", "Spent a week at {name} over the summer.",
                    "One night at {name} on the way up north."],
        "aspects": {
            "service": [("the receptionist", False), ("{person} at the front desk", False),
                        ("the staff", True), ("housekeeping", False), ("the concierge", False)],
            "clean": [("our room", False), ("the bathroom", False), ("the sheets", True), ("the carpets", True)],
            "feature": [("the view", False), ("the bed", False), ("the pool", False), ("the spa", False)],
            "space": [("the lobby", False), ("our room", False), ("the bar", False)],
            "food": [("breakfast", False), ("the room service", False), ("the buffet", False)],
            "price": [("the room rate", False), ("the parking charge", False), ("the minibar prices", True)],
            "wait": [("check-in", False), ("the lift", False)],
        },
    },
    "shop": {
        "names": (["Thread &", "Hollis", "Marlowe", "Cobble", "Fern Street", "Paper Moon", "Ivy Lane"],
                  ["Boutique", "Outfitters", "Home Store", "Books", "Gift Shop", "Emporium"]),
        "kind": ("shop", "shops"), "verb": "been to",
        "openers": ["Popped into {name} looking for a present.", "Went to {name} to replace my old boots.",
                    "Visited {name} during the January sale.", "Browsed {name} on a Sunday afternoon."],
        "aspects": {
            "service": [("the shop assistant", False), ("the staff", True), ("{person} on the till", False),
                        ("the manager", False)],
            "goods": [("the jacket I bought", False), ("the shoes", True), ("the mug I picked up", False),
                        ("the jeans", True), ("the scarf", False)],
            "feature": [("the selection", False), ("the window display", False), ("the range of sizes", False)],
            "price": [("the prices", True), ("the sale prices", True), ("the price tags", True)],
            "space": [("the shop itself", False), ("the layout", False), ("the fitting rooms", True)],
            "wait": [("the queue at the till", False), ("the wait for a fitting room", False)],
        },
    },
    "online": {
        "names": (["Parcel", "Shelf", "Basket", "Bright", "Nimble", "Crate", "Loop"],
                  ["ly", "Box", "Market", "Direct", "Depot", "Supply"]),
        "name_sep": "", "kind": ("online shop", "online shops"), "verb": "ordered from",
        "openers": ["Ordered a lamp from {name} last month.", "Bought a birthday present from {name}.",
                    "Placed my first order with {name} on Monday.", "Ordered some kitchen bits from {name}."],
        "aspects": {
            "goods": [("the item", False), ("the packaging", False), ("the lamp", False), ("the headphones", True),
                        ("the parcel", False), ("the product", False), ("the bedding", False)],
            "wait": [("delivery", False), ("the shipping", False), ("the refund", False)],
            "support": [("customer service", False), ("their support team", False),
                        ("the person on the live chat", False)],
            "price": [("the delivery fee", False), ("the prices", True), ("the postage", False)],
            "app": [("the website", False), ("the checkout", False), ("the tracking page", False)],
        },
    },
    "app": {
        "names": (["Budget", "Sleep", "Habit", "Recipe", "Trail", "Focus", "Note", "Route"],
                  ["Buddy", "Wise", "Pal", "Nest", "Flow", "Box", "Mate"]),
        "name_sep": "", "kind": ("app", "apps"), "verb": "used",
        "openers": ["Downloaded {name} a few weeks ago.", "Switched to {name} from another app.",
                    "Been using {name} daily for a month.", "Installed {name} on my new phone."],
        "aspects": {
            "app": [("the app", False), ("the latest update", False), ("the interface", False),
                    ("syncing", False), ("the home screen", False), ("the widget", False)],
            "support": [("customer support", False), ("the support team", False), ("the developers", True)],
            "price": [("the subscription", False), ("the premium tier", False), ("the in-app purchases", True)],
        },
    },
    "hair": {
        "names": (["Shear", "Mane", "Velvet", "Top Knot", "Clip", "Crown &"],
                  ["Studio", "Salon", "Barbers", "Hair Lounge", "Parlour"]),
        "kind": ("hairdresser", "hairdressers"), "verb": "been to",
        "openers": ["Booked a cut and colour at {name}.", "Went to {name} for a trim before a wedding.",
                    "Tried {name} because my usual barber was fully booked.", "Had my hair done at {name} on Friday."],
        "aspects": {
            "work": [("the haircut", False), ("the colour", False), ("the fade", False), ("my fringe", False),
                        ("the blow-dry", False), ("the highlights", True)],
            "service": [("{person}, who cut my hair,", False), ("my stylist", False), ("the barber", False),
                        ("the receptionist", False)],
            "price": [("the price", False), ("the cost of the colour", False)],
            "clean": [("the basins", True), ("the floor", False), ("the towels", True)],
            "wait": [("the wait", False), ("getting an appointment", False)],
            "space": [("the salon", False)],
            "feature": [("the chairs", True), ("the music", False), ("the head massage", False)],
        },
    },
    "plumber": {
        "names": (["Hartley", "Quinn", "Brennan", "Okafor", "Lowe", "Patel", "Fisher"],
                  ["Plumbing", "& Sons Plumbing", "Heating", "Pipe & Drain"]),
        "kind": ("plumber", "plumbers"), "verb": "used",
        "openers": ["Called {name} about a leaking boiler.", "Used {name} to fit a new shower.",
                    "Had {name} round to unblock the kitchen sink.", "Got {name} in for an emergency leak on Sunday."],
        "aspects": {
            "service": [("the plumber", False), ("{person}, the engineer,", False), ("the lads", True)],
            "work": [("the repair", False), ("the work", False), ("the new shower", False), ("the fix", False),
                        ("the pipework", False)],
            "price": [("the quote", False), ("the call-out fee", False), ("the final invoice", False)],
            "wait": [("getting someone out", False), ("the wait for an engineer", False), ("the job", False)],
            "support": [("the office", False), ("the woman who took my booking", False)],
            "clean": [("the bathroom afterwards", False), ("the kitchen afterwards", False)],
        },
    },
    "gym": {
        "names": (["Iron", "Peak", "Pulse", "Forge", "Summit", "Core", "Anchor"],
                  ["Fitness", "Gym", "Athletic Club", "Strength", "Leisure Centre"]),
        "kind": ("gym", "gyms"), "verb": "been to",
        "openers": ["Joined {name} in January.", "Been a member at {name} for about six months.",
                    "Did a free trial week at {name}.", "Moved to {name} after my old gym closed."],
        "aspects": {
            "feature": [("the equipment", False), ("the pool", False), ("the classes", True), ("the sauna", False)],
            "space": [("the weights area", False), ("the studio", False)],
            "clean": [("the changing rooms", True), ("the showers", True), ("the mats", True)],
            "service": [("the trainers", True), ("{person}, my instructor,", False), ("the reception staff", True)],
            "price": [("the membership", False), ("the joining fee", False), ("the monthly fee", False)],
            "wait": [("the queue for the squat rack", False), ("getting an induction", False)],
        },
    },
    "cinema": {
        "names": (["Regal", "Starlight", "Picture", "Orbit", "Lumière", "Roxy"],
                  ["Cinema", "Picturehouse", "Screens", "Film Club"]),
        "kind": ("cinema", "cinemas"), "verb": "been to",
        "openers": ["Saw the new thriller at {name} on Saturday.", "Took the kids to {name} for a matinee.",
                    "Went to a late showing at {name}.", "Watched a film at {name} with friends."],
        "aspects": {
            "feature": [("the seats", True), ("the sound", False), ("the picture", False)],
            "space": [("the foyer", False), ("the screen room", False)],
            "clean": [("the screen room", False), ("the floor", False), ("the toilets", True)],
            "food": [("the popcorn", False), ("the nachos", True), ("the hot dogs", True)],
            "price": [("the tickets", True), ("the snacks", True), ("the booking fee", False)],
            "service": [("the staff", True), ("the usher", False), ("the lad at the kiosk", False)],
            "wait": [("the queue for snacks", False), ("the queue to get in", False)],
        },
    },
    "takeaway": {
        "names": (["Golden", "Lucky", "Spice", "Dragon", "Mama", "Pizza"],
                  ["Wok", "Express", "Garden", "Palace", "Oven", "Corner"]),
        "kind": ("takeaway", "takeaways"), "verb": "ordered from",
        "openers": ["Ordered from {name} on a Friday night.", "Got a delivery from {name} after work.",
                    "Picked up dinner from {name}.", "Tried {name} for the first time through the app."],
        "aspects": {
            "food": [("the pizza", False), ("the noodles", True), ("the kebab", False), ("the curry", False),
                     ("the spring rolls", True), ("the fried rice", False), ("the garlic bread", False)],
            "wait": [("delivery", False), ("the wait", False), ("collection", False)],
            "price": [("the prices", True), ("the delivery charge", False)],
            "service": [("the driver", False), ("the person on the phone", False)],
            "goods": [("the packaging", False), ("the order", False)],
        },
    },
    "garage": {
        "names": (["Ridgeway", "Bolt", "Milestone", "Crossley", "Gearbox", "Westside"],
                  ["Motors", "Garage", "Autos", "Car Care", "Tyres"]),
        "kind": ("garage", "garages"), "verb": "used",
        "openers": ["Took my car to {name} for its MOT.", "Had my brakes done at {name}.",
                    "Booked a service at {name}.", "Went to {name} when a warning light came on."],
        "aspects": {
            "service": [("the mechanic", False), ("the lads in the workshop", True), ("{person} on reception", False)],
            "work": [("the repair", False), ("the work", False), ("the service", False)],
            "price": [("the quote", False), ("the final bill", False), ("labour", False)],
            "wait": [("getting the car back", False), ("the turnaround", False)],
            "support": [("the service desk", False), ("the manager", False)],
            "space": [("the waiting area", False)],
        },
    },
}

# ---------------------------------------------------------------------------
# Whole-review sentences.  Openers are neutral context; verdicts sum up the
# visit.  {name}, {kind}, {kinds}, {verb} come from the domain.
# ---------------------------------------------------------------------------
GENERIC_OPENERS = ["First visit to {name}.", "Been meaning to try {name} for a while.",
                   "Used {name} for the first time recently.", "Some thoughts on {name}.",
                   "Went with low expectations."]

VERDICTS = {
    -2: ["Avoid {name}.", "Save your money and go elsewhere.", "Honestly one of the worst {kinds} I've {verb}.",
         "I want my money back.", "A complete waste of time and money.", "Never again.", "Absolutely shocking.",
         "Stay well away.", "I'm still angry thinking about it.", "Don't make the mistake I made.",
         "How {name} is still in business is beyond me."],
    -1: ["A bit of a letdown overall.", "I expected more from {name}.", "Probably won't be going back.",
         "Not great.", "Disappointing, to be honest.", "Wouldn't rush back.", "Not really worth it.",
         "Left feeling a bit flat.", "Can't say I'd recommend it.", "There are better {kinds} around."],
    0: ["It's fine for what it is.", "Not great, not terrible.", "Average overall.",
        "Might give it another go, might not.", "Does the job, nothing more.", "It was okay.",
        "A mixed bag.", "Some good, some bad.", "Middle of the road.", "Can't decide how I feel about {name}."],
    1: ["Overall a pleasant experience.", "Would probably go back.", "Pretty happy overall.",
        "A good, solid {kind}.", "Not bad at all.", "Would recommend.", "I'd use {name} again.",
        "Can't complain really.", "Worth a try.", "Happy enough with it."],
    2: ["Can't recommend {name} enough!", "Absolutely loved it.", "Best {kind} around, hands down.",
        "Already planning the next visit.", "Couldn't fault a thing.", "An absolute gem.",
        "Wouldn't hesitate to recommend {name}.", "Honestly perfect.", "I was won over within minutes.",
        "I'll be telling everyone about {name}.", "Exceeded every expectation."],
}

# Ways to introduce a clause whose sign goes against the rest of the review
# (a small positive in a negative review, a small complaint in a positive one).
AGAINST_PREFIX = {
    "positive": ["To be fair, ", "On the plus side, ", "In fairness, ", "At least ", "I will say ",
                 "The one saving grace is that ", "Credit where it's due: "],
    "negative": ["My only complaint is that ", "The only downside was that ", "If I'm being picky, ",
                 "One small gripe: ", "Slight niggle: ", "That said, ", "Mind you, "],
}
# Joining two clauses of opposite sign into one sentence: {a} and {b} are clauses.
CONTRAST = ["{A}, but {b}.", "{A}, although {b}.", "{A}, though {b}.", "While {a}, {b}.",
            "{A}; however, {b}.", "{A}, yet {b}."]
# Optional lead-ins for a plain clause, independent of sentiment.
LEAD_INS = ["I thought ", "Honestly, ", "I found that ", "For what it's worth, ", "I have to say ",
            "In my opinion, ", "Personally, I thought ", "Gotta say, ", "I'd say "]
P_LEAD_IN = 0.3

# ---------------------------------------------------------------------------
# Per-class recipes, weights over LEVELS: "main" for the aspect clauses,
# "verdict" for the closing sentence; "against" is the level of an optional
# clause of the opposite sign, added with probability "p_against".
# Neighbouring classes deliberately overlap.
# ---------------------------------------------------------------------------
LEVELS = [-2, -1, 0, 1, 2]
RECIPES = {
    "1 star": dict(main=[78, 20, 2, 0, 0], against=1, p_against=0.12, verdict=[80, 20, 0, 0, 0]),
    "2 stars": dict(main=[25, 60, 15, 0, 0], against=1, p_against=0.7, verdict=[15, 70, 15, 0, 0]),
    "3 stars": dict(main=[0, 35, 30, 35, 0], against=None, p_against=0.0, verdict=[0, 12, 76, 12, 0]),
    "4 stars": dict(main=[0, 0, 12, 60, 28], against=-1, p_against=0.7, verdict=[0, 0, 12, 70, 18]),
    "5 stars": dict(main=[0, 0, 2, 20, 78], against=-1, p_against=0.1, verdict=[0, 0, 0, 20, 80]),
}
# How many sentences a review has (1-4); shorter reviews are harder, as in real data.
SENTENCE_COUNT_WEIGHTS = [20, 35, 30, 15]


def cap(text):
    return text[0].upper() + text[1:]


class ReviewWriter:
    def __init__(self, rng):
        self.rng = rng

    def business(self, domain):
        first, second = self.rng.choice(domain["names"][0]), self.rng.choice(domain["names"][1])
        name = first + domain.get("name_sep", " ") + second
        kind, kinds = domain["kind"]
        return {"name": name, "kind": kind, "kinds": kinds, "verb": domain["verb"]}

    def clause(self, domain, category, level):
        """'<aspect> <predicate>' in lower case, agreeing in number."""
        phrase, plural = self.rng.choice(domain["aspects"][category])
        phrase = phrase.replace("{person}", self.rng.choice(PEOPLE))
        predicate = self.rng.choice(PREDICATES[category][level]).format(
            be="were" if plural else "was", bent="weren't" if plural else "wasn't",
            it="they" if plural else "it", obj="them" if plural else "it", its="their" if plural else "its")
        return f"{phrase} {predicate}"

    def plain_sentence(self, clause, level):
        text = clause
        if self.rng.random() < P_LEAD_IN:
            text = self.rng.choice(LEAD_INS) + clause
        strong = abs(level) == 2 and self.rng.random() < 0.35
        return cap(text) + ("!" if strong else ".")

    def review(self, label):
        rng = self.rng
        recipe = RECIPES[label]
        domain = DOMAINS[rng.choice(list(DOMAINS))]
        biz = self.business(domain)
        n_sentences = rng.choices([1, 2, 3, 4], weights=SENTENCE_COUNT_WEIGHTS)[0]

        # Fill the sentence budget: opener and verdict are optional, aspect clauses carry most
        # of the signal.  An "against" clause (small positive / small complaint) either takes a
        # sentence of its own or is folded into a contrast sentence with a main clause.
        with_opener = n_sentences >= 3 and rng.random() < 0.5
        with_verdict = rng.random() < (0.3 if n_sentences == 1 else 0.55)
        slots = n_sentences - with_opener - with_verdict
        if slots == 0 and not with_verdict:
            slots = 1
        use_against = recipe["against"] is not None and slots >= 1 and rng.random() < recipe["p_against"]
        fold_against = use_against and (slots == 1 or rng.random() < 0.5)
        n_main = slots - (use_against and not fold_against)
        # Every clause talks about a different aspect (one spare for the against-clause).
        n_main = min(n_main, len(domain["aspects"]) - 1)
        categories = rng.sample(list(domain["aspects"]), k=n_main + 1)

        main_levels = rng.choices(LEVELS, weights=recipe["main"], k=n_main)
        if label == "3 stars" and n_main >= 2:
            # A mixed review: make sure both sides are represented.
            main_levels[0], main_levels[1] = -1, 1
            rng.shuffle(main_levels)
        clauses = [(lvl, self.clause(domain, cat, lvl)) for lvl, cat in zip(main_levels, categories)]
        against = None
        if use_against:
            against = (recipe["against"], self.clause(domain, categories[-1], recipe["against"]))

        # A contrast sentence joins two clauses of opposite sign: the against-clause with a
        # main one, or (in a mixed review) the two halves.
        pair = None
        if fold_against and clauses:
            pair, against = [clauses.pop(0), against], None
        elif label == "3 stars" and len(clauses) >= 2 and rng.random() < 0.5:
            pair = [clauses.pop(0), clauses.pop(0)]
        sentences = []
        if pair is not None:
            (_, a), (_, b) = rng.sample(pair, k=2)
            sentences.append(rng.choice(CONTRAST).format(A=cap(a), a=a, b=b))
        sentences += [self.plain_sentence(c, lvl) for lvl, c in clauses]
        if against is not None:
            side = "positive" if against[0] > 0 else "negative"
            sentence = cap(rng.choice(AGAINST_PREFIX[side]) + against[1]) + "."
            # Never first: the review sets its tone before the concession.
            sentences.insert(rng.randint(1, len(sentences)) if sentences else 0, sentence)

        if with_opener:
            openers = domain["openers"] + GENERIC_OPENERS
            sentences.insert(0, rng.choice(openers).format(**biz))
        if with_verdict:
            level = rng.choices(LEVELS, weights=recipe["verdict"])[0]
            sentences.append(rng.choice(VERDICTS[level]).format(**biz))
        return " ".join(sentences)


def generate(seed=SEED):
    """Return (train_rows, test_rows), each a shuffled list of (text, label)."""
    rng = random.Random(seed)
    writer = ReviewWriter(rng)
    seen = set()  # membership only: never iterated, so hashing order cannot leak into the output
    train, test = [], []
    per_class = TRAIN_PER_CLASS + TEST_PER_CLASS
    for label in LABELS:
        texts = []
        while len(texts) < per_class:
            text = writer.review(label)
            if text not in seen:  # unique across all classes and both splits
                seen.add(text)
                texts.append(text)
        train += [(t, label) for t in texts[:TRAIN_PER_CLASS]]
        test += [(t, label) for t in texts[TRAIN_PER_CLASS:]]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def write_csv(path, rows):
    # newline="" + explicit "\n" terminator: identical bytes on every platform.
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = generate()
    write_csv(args.out / "reviews_train.csv", train)
    write_csv(args.out / "reviews_test.csv", test)
    print(f"wrote {len(train)} rows to {args.out / 'reviews_train.csv'}")
    print(f"wrote {len(test)} rows to {args.out / 'reviews_test.csv'}")


if __name__ == "__main__":
    main()
