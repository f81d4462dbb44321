"""Write jobs/rag/questions.jsonl: questions whose answers are facts of the fictional Quillbank
documents in jobs/rag/docs (written for this repository; the bank does not exist).

Each fact is (document, answer, questions); every question becomes one record
`{"prompt", "completion", "gold_source"}`. The answer is the value exactly as the document
writes it (checked below), so a model can only answer by knowing or retrieving the document.
Deterministic: `python jobs/rag/make_questions.py` rewrites the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

FACTS: list[tuple[str, str, list[str]]] = [
    ("accounts.md", "QB$4.50", [
        "What is the monthly fee of the Quillbank Everyday account?",
        "How much does the Everyday account cost per month?",
        "What does Quillbank charge each month for an Everyday account?",
    ]),
    ("accounts.md", "QB$1,200", [
        "How much must be paid into an Everyday account in a month to waive its fee?",
        "What monthly deposit waives the Everyday account fee?",
        "Above what amount paid in is the Everyday account's monthly fee waived?",
    ]),
    ("accounts.md", "QB$25", [
        "What is the minimum opening deposit for a Quillbank current account?",
        "How much do I need to open an Everyday account?",
        "What is the smallest first deposit Quillbank accepts for a current account?",
    ]),
    ("accounts.md", "QB$9.00", [
        "What is the monthly fee of the Everyday Plus account?",
        "How much does Everyday Plus cost per month?",
        "What does Quillbank charge monthly for Everyday Plus?",
    ]),
    ("accounts.md", "31 days", [
        "How long a trip does the Everyday Plus travel insurance cover?",
        "What is the longest trip covered by Everyday Plus travel insurance?",
    ]),
    ("accounts.md", "18.9% EAR", [
        "What does an arranged overdraft cost at Quillbank?",
        "What is the overdraft interest rate on a Quillbank current account?",
        "What rate is charged on an Everyday account overdraft?",
    ]),
    ("savings.md", "3.4% AER", [
        "What rate does the Nest Saver 12 pay?",
        "What is the interest rate of Quillbank's fixed-rate bond?",
        "How much interest does the Nest Saver 12 earn?",
    ]),
    ("savings.md", "12 months", [
        "For how long is the Nest Saver 12 rate fixed?",
        "How long is the term of the Nest Saver 12 bond?",
    ]),
    ("savings.md", "QB$100", [
        "What is the minimum deposit for the Nest Saver 12?",
        "How much do I need to open a Nest Saver 12 bond?",
    ]),
    ("savings.md", "QB$250,000", [
        "What is the maximum deposit in the Nest Saver 12?",
        "How much can I put into a Nest Saver 12 bond at most?",
    ]),
    ("savings.md", "90 days' interest", [
        "What is the penalty for leaving the Nest Saver 12 early?",
        "What does it cost to take money out of the Nest Saver 12 before the end?",
        "What early withdrawal penalty applies to Quillbank's fixed-rate bond?",
    ]),
    ("savings.md", "2.15% AER", [
        "What rate does the Nest Easy account pay?",
        "What is the interest rate on Nest Easy?",
        "How much interest does Quillbank's easy-access Nest account pay?",
    ]),
    ("savings.md", "3", [
        "How many free withdrawals per month does Nest Easy allow?",
        "How many times a month can I withdraw from Nest Easy without losing interest?",
    ]),
    ("cards.md", "QB$12", [
        "How much does it cost to replace a lost Quill Debit card?",
        "What is the card replacement fee at Quillbank?",
        "What does Quillbank charge for a new debit card after mine was stolen?",
        "How much is a replacement for a damaged Quill Debit card?",
    ]),
    ("cards.md", "6 working days", [
        "How long does a replacement Quill Debit card take to arrive?",
        "When will my replacement debit card arrive with standard delivery?",
        "How many days does standard delivery of a new Quillbank card take?",
    ]),
    ("cards.md", "QB$20", [
        "How much does express delivery of a replacement card cost?",
        "What is the fee for express card delivery at Quillbank?",
    ]),
    ("cards.md", "2 working days", [
        "How quickly does an express-delivered Quill Debit card arrive?",
        "How long does express delivery of a Quillbank card take?",
    ]),
    ("cards.md", "QB$600", [
        "What is the daily ATM withdrawal limit on a Quill Debit card?",
        "How much cash can I take out of an ATM per day with Quillbank?",
        "What is Quillbank's daily cash withdrawal limit?",
    ]),
    ("cards.md", "QB$150", [
        "What is the contactless payment limit on a Quill Debit card?",
        "How much can a single contactless payment be with Quillbank?",
        "What is the maximum contactless payment at Quillbank?",
    ]),
    ("cards.md", "5 working days", [
        "How long does a PIN reminder by post take to arrive?",
        "When does a Quillbank PIN reminder arrive by post?",
    ]),
    ("credit-card.md", "24.9% APR", [
        "What is the purchase APR of the Tern 40 credit card?",
        "What interest rate does the Tern 40 charge on purchases?",
        "What is the representative APR of Quillbank's credit card?",
    ]),
    ("credit-card.md", "18 months", [
        "How long is the 0% balance transfer period on the Tern 40?",
        "For how many months are balance transfers at 0% on the Tern 40 card?",
    ]),
    ("credit-card.md", "2.5%", [
        "What is the balance transfer fee of the Tern 40?",
        "How much does a balance transfer to the Tern 40 cost?",
    ]),
    ("credit-card.md", "QB$15", [
        "What is the late payment fee on the Tern 40 credit card?",
        "How much does Quillbank charge for a late credit card payment?",
        "What is the Tern 40's fee for paying late?",
    ]),
    ("credit-card.md", "QB$10", [
        "What is the smallest minimum payment on the Tern 40?",
        "What is the lowest monthly minimum payment for the Tern 40 credit card?",
    ]),
    ("credit-card.md", "QB$500", [
        "What is the lowest credit limit on the Tern 40?",
        "At what amount do Tern 40 credit limits start?",
    ]),
    ("credit-card.md", "40 Quill points", [
        "How many points does the Tern 40 earn per QB$100 spent?",
        "What does the Tern 40 earn for every QB$100 of spending?",
    ]),
    ("transfers.md", "QB$25,000", [
        "What is Quillbank's daily limit for domestic transfers?",
        "How much can I send to other accounts in the country per day?",
        "What is the daily transfer limit at Quillbank?",
    ]),
    ("transfers.md", "QB$5,000", [
        "What is the largest instant transfer Quillbank allows?",
        "Up to what amount are Quillbank transfers instant?",
        "What is the instant payment limit per payment at Quillbank?",
    ]),
    ("transfers.md", "15:30", [
        "What is the cut-off time for same-day domestic transfers?",
        "By what time must a transfer be made to be processed the same day?",
        "When is Quillbank's daily cut-off for domestic payments?",
    ]),
    ("transfers.md", "QB$8", [
        "How much does an international transfer cost at Quillbank?",
        "What is the fee for sending money abroad with Quillbank?",
        "What does Quillbank charge per international transfer?",
    ]),
    ("transfers.md", "3 working days", [
        "How long does an international transfer take to arrive?",
        "When does money sent abroad with Quillbank arrive?",
    ]),
    ("disputes.md", "60 days", [
        "How long do I have to dispute a card payment?",
        "Within how many days of the statement date can a card payment be disputed?",
        "What is Quillbank's dispute window for card payments?",
        "How late can I challenge an unauthorised card payment?",
    ]),
    ("disputes.md", "Form D-7", [
        "Which form is used to dispute a card payment in a branch?",
        "What is the name of Quillbank's dispute form?",
        "Which paper form raises a card dispute at Quillbank?",
    ]),
    ("disputes.md", "10 working days", [
        "How soon does Quillbank give a provisional credit during a dispute?",
        "Within how many days is a provisional credit given for a disputed payment?",
    ]),
    ("disputes.md", "45 days", [
        "How long does Quillbank take to decide a card dispute?",
        "Within how many days is the final decision on a dispute made?",
    ]),
    ("disputes.md", "14 days' notice", [
        "How much notice is given before a provisional credit is taken back?",
        "If a dispute is rejected, with what notice is the credit reversed?",
    ]),
    ("branch-harrow-street.md", "08:30", [
        "What time does the Harrow Street branch open on weekdays?",
        "When does Quillbank Harrow Street open Monday to Friday?",
        "At what time does the Harrow Street branch open on a Wednesday?",
    ]),
    ("branch-harrow-street.md", "17:00", [
        "What time does the Harrow Street branch close on weekdays?",
        "When does Harrow Street close on a Friday?",
    ]),
    ("branch-harrow-street.md", "12:30", [
        "What time does the Harrow Street branch close on Saturday?",
        "Until when is Harrow Street open on Saturdays?",
    ]),
    ("branch-harrow-street.md", "14 Harrow Street", [
        "What is the address of the Harrow Street branch?",
        "Where exactly is Quillbank's Harrow Street branch?",
    ]),
    ("branch-harrow-street.md", "Tuesdays", [
        "On which day is a mortgage adviser at the Harrow Street branch?",
        "When can I see a mortgage adviser at Harrow Street?",
    ]),
    ("branch-lantern-quay.md", "09:30", [
        "What time does the Lantern Quay branch open?",
        "When does Quillbank Lantern Quay open on weekdays?",
        "At what time does the Lantern Quay branch open on Monday?",
    ]),
    ("branch-lantern-quay.md", "18:00", [
        "What time does the Lantern Quay branch close?",
        "Until when is Lantern Quay open on weekdays?",
    ]),
    ("branch-lantern-quay.md", "Lantern Quay", [
        "Which Quillbank branch has a foreign currency desk?",
        "Where can I order foreign currency at a Quillbank branch?",
    ]),
    ("branch-millbrook.md", "10:00", [
        "What time does the Millbrook branch open?",
        "When does Quillbank Millbrook open on Saturday?",
    ]),
    ("branch-millbrook.md", "16:00", [
        "What time does the Millbrook branch close?",
        "Until when is the Millbrook branch open?",
    ]),
    ("branch-millbrook.md", "QB$60", [
        "How much does a safe deposit box cost at Millbrook?",
        "What is the yearly price of a Quillbank safe deposit box?",
    ]),
    ("fraud.md", "0800 555 0142", [
        "What is Quillbank's fraud line number?",
        "Which number do I call to report a stolen Quillbank card?",
        "What phone number reports a lost Quillbank card?",
    ]),
    ("fraud.md", "2 days", [
        "Within how many days must a lost card be reported to pay nothing?",
        "How quickly must I report a lost card to have no liability?",
    ]),
    ("fraud.md", "QB$50", [
        "What is the most a customer can lose after reporting a lost card late?",
        "What is the maximum liability for unauthorised payments reported late?",
    ]),
    ("mortgages.md", "4.29%", [
        "What is the fixed rate of the Keystone 5 mortgage?",
        "What interest rate does the Keystone 5 charge?",
        "What is Quillbank's 5-year fixed mortgage rate?",
    ]),
    ("mortgages.md", "QB$999", [
        "What is the arrangement fee of the Keystone 5 mortgage?",
        "How much does it cost to arrange a Keystone 5 mortgage?",
    ]),
    ("mortgages.md", "90%", [
        "What is the maximum loan to value of the Keystone 5?",
        "What share of a property's value can the Keystone 5 lend?",
    ]),
    ("mortgages.md", "10%", [
        "How much can I overpay on the Keystone 5 each year without a charge?",
        "What is the yearly overpayment allowance on a Keystone 5 mortgage?",
    ]),
    ("mortgages.md", "6 months", [
        "How long is a Quillbank mortgage offer valid?",
        "For how long does a Keystone 5 mortgage offer last?",
    ]),
    ("loans.md", "QB$35,000", [
        "What is the largest Sparrow personal loan?",
        "How much can I borrow at most with a Sparrow loan?",
        "What is the maximum amount of a Quillbank personal loan?",
    ]),
    ("loans.md", "QB$1,000", [
        "What is the smallest Sparrow personal loan?",
        "What is the minimum amount of a Sparrow loan?",
    ]),
    ("loans.md", "6.9% APR", [
        "What is the representative APR of the Sparrow loan?",
        "What interest rate does a Sparrow personal loan charge?",
    ]),
    ("loans.md", "58 days' interest", [
        "What does it cost to repay a Sparrow loan early?",
        "What is the early repayment charge on a Sparrow loan?",
    ]),
    ("loans.md", "21", [
        "How old must I be to apply for a Sparrow loan?",
        "What is the minimum age for a Quillbank personal loan?",
    ]),
    ("app.md", "5", [
        "After how many wrong login attempts does the Quillbank app lock?",
        "How many failed logins lock the Quillbank app?",
    ]),
    ("app.md", "10 minutes", [
        "How long is a Quillbank password reset code valid?",
        "For how many minutes can I use the password reset code?",
    ]),
    ("app.md", "Android 11", [
        "Which Android version does the Quillbank app need?",
        "What is the oldest Android version the Quillbank app runs on?",
    ]),
    ("business.md", "12 months", [
        "How long is the Business Start account free?",
        "For how many months does Business Start cost nothing?",
    ]),
    ("business.md", "QB$7", [
        "What is the monthly fee of Business Start after the free period?",
        "How much does a Business Start account cost per month once it is no longer free?",
    ]),
    ("business.md", "0.5%", [
        "What does it cost a business to pay cash in at a branch?",
        "What is the business cash deposit fee?",
    ]),
    ("business.md", "4", [
        "How many employee debit cards can a business account have?",
        "What is the maximum number of Quill Debit cards on a business account?",
    ]),
    ("foreign.md", "2.75%", [
        "What is the foreign transaction fee on Quillbank cards?",
        "How much does Quillbank charge for card payments in a foreign currency?",
        "What percentage fee applies to spending abroad?",
    ]),
    ("foreign.md", "QB$3", [
        "How much does a cash withdrawal abroad cost?",
        "What is the fee for using an ATM abroad with a Quillbank card?",
    ]),
    ("student.md", "17 to 25", [
        "What ages is the Campus account for?",
        "Who can open a Campus account by age?",
    ]),
    ("student.md", "QB$1,500", [
        "How large is the interest-free overdraft on the Campus account?",
        "What is the Campus account's overdraft limit?",
    ]),
    ("student.md", "2 years", [
        "When does a Campus account become an Everyday account?",
        "How long after the course ends does the Campus account convert?",
    ]),
    ("support.md", "07:00 to 22:00", [
        "What are Quillbank's phone support hours?",
        "When can I call Quillbank support?",
        "At what times is Quillbank phone support open?",
    ]),
    ("support.md", "8 weeks", [
        "How long does Quillbank take to give a final response to a complaint?",
        "Within what time is a complaint answered in writing?",
    ]),
    ("support.md", "QC-", [
        "How does a Quillbank complaint reference start?",
        "What prefix do Quillbank complaint references have?",
    ]),
    ("support.md", "24 months", [
        "After how long without activity does an account become dormant?",
        "When is a Quillbank account considered dormant?",
    ]),
]  # fmt: skip


def records() -> list[dict]:
    """One record per question, in table order; each answer checked against its document."""
    out = []
    for source, answer, questions in FACTS:
        text = (HERE / "docs" / source).read_text()
        if answer not in text:
            raise ValueError(f"{answer!r} is not in docs/{source}")
        out += [{"prompt": q, "completion": answer, "gold_source": source} for q in questions]
    return out


if __name__ == "__main__":
    rows = records()
    with (HERE / "questions.jsonl").open("w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"wrote {len(rows)} questions on {len(FACTS)} facts to {HERE / 'questions.jsonl'}")
