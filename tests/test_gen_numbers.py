"""gen/numbers.py: Hindi numbers as values, checked against AI4Bharat's indic-numtowords and a table."""
import pytest
from indic_numtowords import num2words

from gen import faithful, numbers, text

# Written forms a teacher uses, with the value a Hindi reader gives them (None: not a number).
TABLE = [
  ("45", 45), ("४५", 45), ("पैंतालीस", 45), ("3.8", 3.8), ("३.८", 3.8), ("2,500", 2500), ("1,00,000", 100000),
  ("१,००,०००", 100000), ("१९८६", 1986), ("सन् 1986 में", 1986), ("उन्नीस सौ छियासी", 1986),
  ("एक हज़ार नौ सौ छियासी", 1986), ("दो हजार चौबीस", 2024), ("चौदह", 14), ("तेरह", 13), ("पैंतीस", 35),
  ("पाँच सौ", 500), ("पांच सौ", 500), ("ढाई", 2.5), ("ढाई हज़ार", 2500), ("डेढ़", 1.5), ("डेढ़ सौ", 150),
  ("डेढ घंटे", 1.5), ("सवा", 1.25), ("सवा सौ", 125), ("सवा दो लाख", 225000), ("साढ़े तीन सौ", 350),
  ("साढ़े सात", 7.5), ("पौने दो सौ", 175), ("आधा", 0.5), ("आधे घंटे", 0.5), ("आधी कीमत", 0.5),
  ("लाख", 100000), ("तीन लाख", 300000), ("दो लाख पचास हज़ार", 250000), ("एक करोड़", 10 ** 7),
  ("डेढ़ करोड़", 1.5e7), ("एक करोड़ पचास लाख", 1.5e7), ("2 लाख", 200000), ("1.5 करोड़", 1.5e7),
  ("२ करोड़", 2e7), ("सौ", 100), ("एक सौ आठ", 108), ("एक सौ आठ मनके", 108), ("पहला", 1), ("पहली बार", 1),
  ("तीसरा", 3), ("चौथी मंज़िल", 4), ("छठी शताब्दी", 6), ("पाँचवाँ", 5), ("सातवें दिन", 7), ("दसवीं", 10),
  ("बीसवीं सदी", 20), ("सोलहवीं शताब्दी", 16), ("16वीं सदी", 16), ("१६वीं सदी", 16), ("सौवाँ", 100),
  ("निन्यानबे", 99), ("निन्यानवे", 99), ("छः", 6), ("छह", 6), ("पन्द्रह", 15), ("नौ", 9), ("शून्य", 0),
  ("अट्ठारह", 18), ("अठारह", 18), ("अस्सी", 80),
  ("एक", None), ("एक प्रसिद्ध मंदिर", None), ("अस्सी घाट", None), ("पहले यहाँ", None), ("दूसरे मंदिर", None),
  ("हज़ारों लोग", None), ("लाखों दीये", None), ("कारण", None), ("सवारी", None), ("सौंदर्य", None),
]
RANGES = [("10-15 मिनट", {10, 15}), ("दस से पंद्रह मिनट", {10, 15}), ("दो-तीन घंटे", {2, 3}),
          ("१०–१५ किलोमीटर", {10, 15}), ("सात या आठ", {7, 8}), ("1986-87", {1986, 87})]


@pytest.mark.parametrize("written,value", TABLE)
def test_written_forms_read_as_values(written, value):
  assert numbers.values(written) == (set() if value is None else {value})


def test_table_is_large():
  assert len(TABLE) >= 60 and len({w for w, _ in TABLE}) == len(TABLE)


@pytest.mark.parametrize("written,expected", RANGES)
def test_ranges_give_both_ends(written, expected):
  assert numbers.values(written) == expected


# Every cardinal 0..99 and larger values as AI4Bharat's indic-numtowords writes them (1 is "एक",
# the article too, so it counts only next to a multiplier).
REFERENCE = [n for n in range(100) if n != 1] + [100, 101, 108, 150, 365, 999, 1000, 1001, 1500, 1947, 1986, 2024,
                                                 2500, 12000, 99999, 100000, 250000, 1000000, 2345678, 10 ** 7,
                                                 15000000, 123456789]


def test_reads_what_indic_numtowords_writes():
  wrong = {n: num2words(n, lang="hi") for n in REFERENCE if numbers.values(num2words(n, lang="hi")) != {n}}
  assert not wrong, wrong


def test_devanagari_and_ascii_digits_and_words_are_one_value():
  for n in REFERENCE:
    deva = str(n).translate(str.maketrans("0123456789", "०१२३४५६७८९"))
    assert numbers.values(deva) == numbers.values(str(n)) == {n}
  assert numbers.canonical("ढाई हज़ार रुपये, १४ दिन और चौदह घंटे") == "2500 रुपये, 14 दिन और 14 घंटे"


def test_numbers_compared_by_value_in_faithfulness_agreement_and_near_duplicates():
  ctx = "यह मंदिर 1986 में बना। यहाँ 14 पुजारी हैं। प्रवेश शुल्क 35 रुपये है और दर्शन में आधा घंटा लगता है।"
  assert faithful.unsupported_numbers("यह मंदिर सन् उन्नीस सौ छियासी में बना।", ctx) == []
  assert faithful.unsupported_numbers("यहाँ चौदह पुजारी हैं और शुल्क पैंतीस रुपये है।", ctx) == []
  assert faithful.unsupported_numbers("दर्शन में आधे घंटे का समय लगता है।", ctx) == []
  assert faithful.unsupported_numbers("यहाँ तेरह पुजारी हैं।", ctx) == ["13"]
  q = "मंदिर में कितने पुजारी हैं?"
  assert text.answer_agreement(q, "मंदिर में १४ पुजारी हैं।", q, "मंदिर में चौदह पुजारी हैं।") == 1.0
  assert text.answer_agreement(q, "मंदिर में १४ पुजारी हैं।", q, "मंदिर में तेरह पुजारी हैं।") < 0.6
  assert text.dedup_form("प्रवेश शुल्क पैंतीस रुपये है।") == text.dedup_form("प्रवेश शुल्क ३५ रुपये है")
  # a how-many question answered by a fraction or "free" is answered
  assert faithful.restatement("दर्शन में कितना समय लगता है?", "दर्शन में आधा घंटा लगता है।") == ""
